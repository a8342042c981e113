"""Write tests/fixtures/loss_defaults.json: every registered loss's resolved default parameters.

tests/losses/test_loss_params.py compares the registry with this file, so no default changes silently.
Changing a default is a release decision: bump ``lud.__version__`` (src/lud/__init__.py), say what
changed in CHANGELOG.md, then run ``python scripts/pin_loss_defaults.py``. The script refuses to
record changed defaults under the version already recorded, unless ``--same-version`` says that the
change builds the same losses (a parameter renamed or regrouped, no value changed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lud
from lud.losses import loss_entries

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "loss_defaults.json"


def current() -> dict:
    """The fixture's content as the code stands."""
    return {
        "lud_version": lud.__version__,
        "losses": {e.name: e.build().resolved_params() for e in loss_entries()},
    }


def main(argv: list[str] | None = None) -> int:
    same_version = "--same-version" in (sys.argv[1:] if argv is None else argv)
    now = current()
    if FIXTURE.is_file() and not same_version:
        old = json.loads(FIXTURE.read_text())
        if old["losses"] != now["losses"] and old["lud_version"] == now["lud_version"]:
            changed = sorted(
                name for name in {*old["losses"], *now["losses"]}
                if old["losses"].get(name) != now["losses"].get(name)
            )
            print(f"defaults of {', '.join(changed)} changed but lud.__version__ is still "
                  f"{now['lud_version']}: bump the version and write the changelog first (or, "
                  "when the losses built are the same, pass --same-version)", file=sys.stderr)
            return 1
    FIXTURE.write_text(json.dumps(now, indent=1, sort_keys=False) + "\n")
    print(f"wrote {FIXTURE} ({len(now['losses'])} losses, lud {now['lud_version']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
