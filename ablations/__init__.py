"""The ablation runner: a paper table -> its grid of runs -> submitit jobs executing the table's notebook ->
the results store -> the rendered table (``python ablations/run.py --help``)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SPECS = Path(__file__).resolve().parent / "specs"
PAPER_TABLES = REPO / "paper_tables"
SLURM = REPO / "slurm"
