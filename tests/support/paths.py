"""Where the test fixtures live: inside the repository, so a clone with nothing beside it runs."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SANDBOX = FIXTURES / "sandbox"
SYNTHEA = FIXTURES / "synthea"
