"""The report's "SMB resumed: where the time went": of the retry that first succeeded after the
cut, when it began and what each SMB phase took, p50 over the runs.

SMB resumed is the sum of two things that have different owners: when the client's retry began
(its retry cadence, and whether the IP was up by then) and how long the connect, session setup,
tree connect, open, read and close took on a cluster still busy with its recovery and takeover
run. The metric tables show only the sum.
"""

from __future__ import annotations

from ctdblab.history import events_of_run
from ctdblab.scenarios.checkers import SMB_STEPS, smb_resume_steps
from ctdblab.stats import median

from .load import Dataset
from .stats import role_title, roles_of, runs_with_role

COLUMNS = ("began_s", *SMB_STEPS, "done_s")
TITLES = {"began_s": "retry began", "done_s": "SMB resumed"}


def smb_resume_section(failover: list[Dataset]) -> list[str]:
    rows = []
    for dataset in failover:
        for role in roles_of([dataset]):
            found = [smb_resume_steps(events_of_run(dataset.events, run.run), run.t_cut)
                     for run in runs_with_role(dataset, role) if run.t_cut is not None]
            found = [f for f in found if f is not None]
            if not found:
                continue
            cells = []
            for column in COLUMNS:
                values = [f[column] for f in found if column in f]
                cells.append(f"{median(values):.3f}" if values else "–")
            rows.append([dataset.label, role_title(role), str(len(found)), *cells])
    if not rows:
        return []
    header = ["dataset", "victim", "runs", *(f"{TITLES.get(c, c)} (s)" for c in COLUMNS)]
    return ["## SMB resumed: where the time went", "",
            "The retry that first succeeded after the cut: when it began (seconds after the cut), "
            "the seconds each SMB phase took, and when it ended (= SMB resumed); p50 over the runs. "
            "Phases are medians of their own, so they need not add up to the end.", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]
