"""`python -m genray.cli ...`: the same command as the `genray` console script."""

from genray.cli import app

app()
