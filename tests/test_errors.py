"""One exception base for the project, and the exit status of each kind of error mapped in one table."""

import importlib
import pkgutil

import pytest

import jobs
import models
import schemas
import udfs
from jobs.lake.damage import DamagedLakeError
from jobs.lake.lock import LakeBusyError
from jobs.lake.publish import GateBlocked, PublishError
from jobs.read.index import ProductIndexError
from jobs.read.search import SearchError
from jobs.runtime.exits import fail
from jobs.stages.graph import GraphError
from models.core.errors import CatalogEnrichError, exit_code
from models.core.faults import InjectedFault
from models.store import ModelIntegrityError

# Failures injected by the reliability tests stand for a lost task, not for an error of the project.
NOT_PROJECT_ERRORS = {InjectedFault}


def _project_exception_classes():
    found = set()
    for pkg in (jobs, models, udfs, schemas):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if (isinstance(value, type) and issubclass(value, BaseException)
                        and value.__module__.split(".")[0] in ("jobs", "models", "udfs", "schemas")):
                    found.add(value)
    return found


def test_every_project_exception_derives_from_the_base_and_keeps_a_builtin_base():
    classes = _project_exception_classes() - NOT_PROJECT_ERRORS
    assert len(classes) >= 18, sorted(c.__name__ for c in classes)
    for cls in classes:
        assert issubclass(cls, CatalogEnrichError), cls
        if cls.__module__ == "models.core.errors":   # the base and the kinds the exit-code table names
            continue
        builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException,
                                                                                     object)]
        assert builtin, f"{cls.__name__} lost its builtin base (ValueError or RuntimeError)"


@pytest.mark.parametrize(("error", "code"), [
    (LakeBusyError("busy"), 3),
    (GateBlocked("gate failed"), 3),
    (DamagedLakeError("product_embeddings", "v3 is missing", "restore v2"), 4),
    (GraphError("did not converge"), 1),
    (PublishError("no such run"), 2),
    (SearchError("bad query"), 2),
    (ProductIndexError("no table"), 2),
    (ModelIntegrityError("sha256 mismatch"), 2),
    (ValueError("not ours"), 1),
    (InjectedFault("task lost"), 1),
])
def test_exit_codes_of_the_error_kinds(error, code):
    assert exit_code(error) == code


def test_fail_says_the_error_in_one_line_and_returns_its_code(capsys):
    assert fail(GateBlocked("output gate of run r1 failed"), "blocked") == 3
    assert capsys.readouterr().err == "blocked: output gate of run r1 failed\n"


def test_the_old_index_error_name_still_catches():
    from jobs.read.index import IndexError_

    with pytest.raises(IndexError_):
        raise ProductIndexError("no table")
