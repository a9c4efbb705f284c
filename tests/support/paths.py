"""Where the shared, read-only fixtures live: `shared/` beside the repository checkout."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared"
SANDBOX = SHARED / "fixtures" / "sandbox"
SYNTHEA = SHARED / "fixtures" / "synthea"
