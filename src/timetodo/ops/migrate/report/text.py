"""`migration_final_report.txt`: the report model as plain text (the same facts as the HTML page and the JSON)."""

from __future__ import annotations

from timetodo.ops.migrate.report.model import Report, clock, human_seconds


def render_text(report: Report) -> str:
    out = [
        "Time to DO — migration report",
        "=" * 40,
        f"outcome:        {report.outcome}",
        f"started:        {clock(report.started_at)}",
        f"ended:          {clock(report.ended_at)}",
        f"write freeze:   {report.write_freeze}"
        + (f" ({clock(report.freeze.started_at)} → {clock(report.freeze.ended_at)})" if report.freeze else ""),
    ]
    if report.forwarding is not None:
        out.append(f"forwarding:     {clock(report.forwarding.started_at)} → {clock(report.forwarding.ended_at)}")
    out += ["", "Steps, in the order they ran", "-" * 40]
    for row in report.rows:
        name = f"  · {row.step}" if row.parent else row.step + (f" (attempt {row.attempt})" if row.attempt > 1 else "")
        out.append(
            f"{name:<26} {row.status:<11} {clock(row.started_at)} → {clock(row.ended_at)}  {human_seconds(row.seconds)}"
        )
        if row.error:
            out.append(f"{'':<26} error: {row.error}")
        for moved in row.moved:
            rate = f" at {moved.rate}" if moved.rate else ""
            out.append(f"{'':<26} moved {moved.what}: {moved.label} in {human_seconds(moved.seconds)}{rate}")
    out += [
        "",
        "Verification" + ("" if report.verification_ok is None else (": OK" if report.verification_ok else ": FAILED")),
        "-" * 40,
    ]
    if not report.verification:
        out.append("not validated")
    for check in report.verification:
        out.append(
            f"{check.status:<8} {check.section:<9} {check.check}" + (f" — {check.figures}" if check.figures else "")
        )
    out += ["", "Hosts", "-" * 40]
    for side in report.sides:
        known = [
            f"{label} {value}"
            for label, value in (
                ("address", side.address),
                ("host", side.host),
                ("image", side.image),
                ("version", side.version),
            )
            if value
        ] + [f"{label} {value}" for label, value in side.details.items()]
        out.append(f"{side.role:<7} " + ("; ".join(known) if known else "unknown"))
    return "\n".join(out) + "\n"
