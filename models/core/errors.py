"""The project's exception base and the exit status each kind of error ends a command with.

Every error the project raises on purpose derives from :class:`CatalogEnrichError` (and keeps its builtin base,
``ValueError`` or ``RuntimeError``, so ``except ValueError`` callers still catch it). A command line maps an
error to its exit status with :func:`exit_code`, from the one table :data:`EXIT_CODES`:

====  ==========================================================================================
0     done
1     the job failed while running (:class:`JobFailure`, or any error the project did not foresee)
2     the request or its input cannot be used (every other :class:`CatalogEnrichError`; a usage error)
3     blocked: another run holds the lake, or a quality gate refused (:class:`BlockedError`; a failed gate)
4     a damaged lake: a table or the index cannot be read (:class:`DamagedError`)
====  ==========================================================================================
"""

from __future__ import annotations

__all__ = ["EXIT_BLOCKED", "EXIT_CODES", "EXIT_DAMAGED", "EXIT_FAILED", "EXIT_OK", "EXIT_UNUSABLE", "BlockedError",
           "CatalogEnrichError", "DamagedError", "JobFailure", "exit_code"]

EXIT_OK = 0
EXIT_FAILED = 1      # also a run that did not account for every input row
EXIT_UNUSABLE = 2    # also a usage error, and an enrich run whose catalog had no valid row (status 'empty')
EXIT_BLOCKED = 3     # also a quality gate's failed verdict
EXIT_DAMAGED = 4


class CatalogEnrichError(Exception):
    """Base of every error the project raises on purpose; on its own, a request or input that cannot be used."""


class JobFailure(CatalogEnrichError):
    """The job failed while running, through no fault of its request (a limit reached, a result that failed
    its own check)."""


class BlockedError(CatalogEnrichError):
    """The work may not go ahead now: another run holds the lake, or a quality gate refused."""


class DamagedError(CatalogEnrichError):
    """Stored data (a Delta table, the similarity index) cannot be read and needs a repair."""


# Most specific first: the first class an error is an instance of gives its exit status.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (DamagedError, EXIT_DAMAGED),
    (BlockedError, EXIT_BLOCKED),
    (JobFailure, EXIT_FAILED),
    (CatalogEnrichError, EXIT_UNUSABLE),
)


def exit_code(error: BaseException) -> int:
    """The exit status a command ends with for ``error``: :data:`EXIT_CODES`, else 1 (an unforeseen error)."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_FAILED
