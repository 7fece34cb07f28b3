"""`eartalk`: one console script, one sub-command per job module.

Each command lives in its own module under jobs/ with `main(argv: list[str] | None) -> int`, so
`eartalk render ...` and `python -m jobs.render ...` run the same code with the same arguments.
Modules are imported lazily: `eartalk metrics` does not pay for importing Ray.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "render": ("jobs.render", "render a manifest of (portrait, audio, controls) rows to MP4 + results Parquet"),
    "metrics": ("jobs.metrics", "measure one video (sync, identity, pose, blinks, quality) and print JSON"),
    "compare": ("jobs.compare", "compare a run's metrics with a baseline run; exit 1 on regression"),
    "prepare": ("jobs.prepare", "a real talking-head video corpus -> training shards (Ray Data)"),
    "train": ("jobs.train", "train the frame VAE and the SFA transformer (DeepSpeed)"),
    "accept": ("jobs.accept", "judge a checkpoint on held-out real inputs (sync, identity, yaw, blinks)"),
    "nightly": ("jobs.nightly_dubbing", "nightly dubbing: new catalog pairs -> render -> compare -> ledger"),
}


def usage() -> str:
    lines = ["usage: eartalk COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`eartalk COMMAND --help` describes each command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"eartalk: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
