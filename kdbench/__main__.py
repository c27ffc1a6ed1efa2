"""`python -m kdbench ...` is the `kdbench` command: the workflow's rules call it so, which runs this checkout's
package (the Snakefile puts it on PYTHONPATH) with the interpreter of the job's environment, its conda environment
under `snakemake --use-conda` (workflow/envs/kdbench.yaml), where no `kdbench` script is installed."""
import sys

from kdbench.cli import main

sys.exit(main())
