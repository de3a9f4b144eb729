"""Operations helpers that ship with the package: configuration renderers for what runs around the app."""
