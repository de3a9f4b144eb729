from timetodo.cli import main

main()
