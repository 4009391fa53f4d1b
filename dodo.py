"""doit entry point: wires the ktailor task generators. The logic lives in src/ktailor/."""

from pathlib import Path

from ktailor import dag

ROOT = Path(__file__).resolve().parent
DOIT_CONFIG = dag.doit_config(ROOT)


def task_download():
    yield from dag.download_tasks(ROOT)


def task_extract():
    yield from dag.extract_tasks(ROOT)


def task_lint():
    yield from dag.lint_tasks(ROOT)


def task_config():
    yield from dag.config_tasks(ROOT)


def task_report():
    yield from dag.report_tasks(ROOT)


def task_build():
    yield from dag.build_tasks(ROOT)


def task_ledger():
    yield from dag.ledger_tasks(ROOT)


def task_verify():
    yield from dag.verify_tasks(ROOT)


def task_boot():
    yield from dag.boot_tasks(ROOT)


def task_accept():
    yield from dag.accept_tasks(ROOT)


def task_reproduce():
    yield from dag.reproduce_tasks(ROOT)


def task_install():
    yield from dag.install_tasks(ROOT)
