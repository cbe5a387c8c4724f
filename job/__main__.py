"""`python -m job` is the same as `cifar-job`."""

from job.cli import main

main(prog_name="cifar-job")
