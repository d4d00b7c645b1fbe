"""The package's public names: `__all__` sorted like ruff's RUF022, complete, and real."""

import importlib
import pkgutil
import random
import re
import types

import gemimg_async

# Private modules whose names a user works with: everything in their __all__ is exported,
# except the helpers listed in INTERNAL with the reason they stay inside.
USER_FACING_MODULES = (
    "_budget",
    "_bulk",
    "_client",
    "_clock",
    "_config",
    "_events",
    "_exceptions",
    "_gallery",
    "_info",
    "_http",
    "_jobs",
    "_manifest",
    "_models",
    "_prices",
    "_progress",
    "_provenance",
    "_results",
    "_sizes",
    "_stats",
    "_summary",
)
INTERNAL = {
    "_results.report_shortfalls",  # the engine warns with it once a result is made
    "_budget.Budget",  # run_batch(max_cost=) keeps one; the manifest is its ledger
    "_budget.charge_of",  # the rule Budget applies to a finished job
    "_gallery.Card",  # one tile of the page, built from manifest entries
    "_gallery.PILLOW_MISSING",  # the message of the ConfigurationError without Pillow
    "_gallery.THUMBS",  # where thumbnails go: OUT/.thumbs
    "_gallery.cards_of",  # build_gallery's reading of the manifest
    "_gallery.make_thumbnail",  # build_gallery makes them
    "_gallery.render",  # build_gallery's page, without the files
    "_gallery.require_pillow",  # `batch --gallery` checks before paying
    "_info.describe",  # the sinks call it once an image is placed: its sidecar, or none
    "_info.sidecar_bytes",  # what write_sidecar writes
    "_info.sidecar_path",  # where the sinks put a sidecar: {image}.json; read_info finds it
    "_info.write_sidecar",  # the sinks write sidecars
    "_prices.COST_HEADER",  # LiteLLM's header name, read by reported_cost
    "_prices.header_cost",  # the client reads each answer's reported cost
    "_prices.money",  # how amounts are shown: $0.1340
    "_prices.reported_cost",  # ... through this
    "_prices.usage_cost",  # ... or prices its usage
    "_provenance.KEYWORDS",  # the PNG keywords of Provenance's fields
    "_provenance.software",  # the library name and version written into files
    "_jobs.fingerprint",  # what the manifest keeps of a job, to tell a changed one
    "_jobs.iterable_jobs",  # run_batch takes requests directly; this numbers them
    "_jobs.text_jobs",  # read_jobs of a checked job file, with fingerprints, for BatchRun
    "_manifest.keep_latest",  # how the journals and readers merge manifests
    "_manifest.optional_str",  # a field check shared with the send log's lines
    "_manifest.scan",  # read_manifest, with where each line starts, for the journal
    "_manifest.status_of",  # ManifestEntry.from_outcome applies it
    "_models.data_uri",  # used by _inputs to inline files; users pass bytes to `images=`
    "_models.image_media_type",  # the check behind data_uri, used by _inputs for files
    "_models.is_file_ref",  # how _inputs and job files tell local files from URLs
    "_models.check_stem",  # the file-name rule behind `id=` and `save(stem=)`, enforced there
    # text formatting for the progress displays and the CLI; users take a Progress class
    "_progress.cost_rows",
    "_progress.format_duration",
    "_progress.rich_available",
    "_progress.status_line",
    "_progress.summary_rows",
    "_events.emit",  # how the client calls listeners
    "_sizes.base_model",  # how dialects split a tier off a model name
    "_sizes.pixels",  # Google's table, read through Asked.pixels
    "_sizes.tier_of",  # how Asked reads a model name
    "_summary.Tally",  # how a running batch counts, behind BatchStats and BatchSummary
}
# Test helpers: public, but from gemimg_async.testing rather than the package itself.
TESTING_ONLY = {
    "_clock.FakeClock",
}
# Dunders that are part of the public surface, as httpx keeps __version__.
PUBLIC_DUNDERS = {"__version__"}


def isort_key(name: str) -> tuple[int, tuple[str | int, ...]]:
    """ruff RUF022's "isort-style" order: SCREAMING_CASE, then CamelCase, then the rest;
    each group in natural order (digits compared as numbers), case-sensitive."""
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    parts = re.split(r"(\d+)", name)
    return group, tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


def private_modules() -> list[types.ModuleType]:
    return [
        importlib.import_module(f"gemimg_async.{info.name}")
        for info in pkgutil.iter_modules(gemimg_async.__path__)
        if info.name.startswith("_") and info.name != "__main__"
    ]


def test_isort_key_orders_like_ruff():
    """The sort key reproduces ruff's RUF022 fix on a sample that covers its rules."""
    ruff_fixed = [
        "ASPECT_RATIOS",
        "A_2",
        "A_10",
        "MAX_INPUT_IMAGES",
        "Z9",
        "Z10",
        "ABc",
        "APIError",
        "Client",
        "T",
        "Timeouts",
        "_Priv",
        "__version__",
        "_priv",
        "resolve_model",
        "t",
        "x9",
        "x10",
    ]
    shuffled = random.Random(22).sample(ruff_fixed, len(ruff_fixed))  # noqa: S311 - a fixed shuffle
    assert shuffled != ruff_fixed
    assert sorted(shuffled, key=isort_key) == ruff_fixed


def test_all_is_sorted():
    """gemimg_async.__all__ is in RUF022 isort-style order."""
    assert gemimg_async.__all__ == sorted(gemimg_async.__all__, key=isort_key)


def test_all_has_no_duplicates():
    """No name is exported twice."""
    assert len(gemimg_async.__all__) == len(set(gemimg_async.__all__))


def test_every_exported_name_exists():
    """Every name in __all__ is an attribute of the package."""
    missing = [name for name in gemimg_async.__all__ if not hasattr(gemimg_async, name)]
    assert missing == []


def test_star_import_gives_exactly_all():
    """`from gemimg_async import *` binds every exported name and nothing else."""
    namespace: dict[str, object] = {}
    exec("from gemimg_async import *", namespace)  # noqa: S102 - the behaviour under test
    namespace.pop("__builtins__")
    assert set(namespace) == set(gemimg_async.__all__)


def test_every_public_attribute_is_exported():
    """Like httpx: each public name in the package namespace (bar submodules) is in __all__."""
    public = {
        name
        for name, value in vars(gemimg_async).items()
        if (not name.startswith("_") or name in PUBLIC_DUNDERS)
        and not isinstance(value, types.ModuleType)
    }
    assert sorted(public - set(gemimg_async.__all__)) == []


def test_user_facing_names_of_private_modules_are_exported():
    """Every name a user needs from a private module's __all__ is re-exported, as that object."""
    missing, different = [], []
    for module_name in USER_FACING_MODULES:
        module = importlib.import_module(f"gemimg_async.{module_name}")
        for name in module.__all__:
            if f"{module_name}.{name}" in INTERNAL | TESTING_ONLY:
                continue
            if name not in gemimg_async.__all__:
                missing.append(f"{module_name}.{name}")
            elif getattr(gemimg_async, name) is not getattr(module, name):
                different.append(f"{module_name}.{name}")
    assert missing == []
    assert different == []


def test_internal_allowlist_is_not_stale():
    """Every name kept internal still exists in its module's __all__ and is not exported."""
    for entry in INTERNAL:
        module_name, name = entry.split(".")
        module = importlib.import_module(f"gemimg_async.{module_name}")
        assert name in module.__all__
        assert name not in gemimg_async.__all__


def test_testing_helpers_are_exported_from_testing():
    """Helpers kept out of the package are exported by gemimg_async.testing, as that object."""
    testing = importlib.import_module("gemimg_async.testing")
    for entry in TESTING_ONLY:
        module_name, name = entry.split(".")
        module = importlib.import_module(f"gemimg_async.{module_name}")
        assert name in module.__all__
        assert name in testing.__all__
        assert getattr(testing, name) is getattr(module, name)


def test_every_private_module_all_is_real_and_sorted():
    """Each private module's own __all__ names real attributes, sorted the same way."""
    for module in private_modules():
        names = getattr(module, "__all__", None)
        assert names is not None, f"{module.__name__} has no __all__"
        assert [n for n in names if not hasattr(module, n)] == [], module.__name__
        assert names == sorted(names, key=isort_key), module.__name__


def test_exports_come_from_the_package_modules():
    """Every exported class or function is defined in gemimg_async, not in a dependency."""
    for name in gemimg_async.__all__:
        value = getattr(gemimg_async, name)
        module = getattr(value, "__module__", None)
        if isinstance(value, (type, types.FunctionType)):
            assert module is not None
            assert module.startswith("gemimg_async"), (name, module)


def test_testing_module_all_is_real_and_sorted():
    """gemimg_async.testing, the public fake relay, has a sorted __all__ of real names."""
    testing = importlib.import_module("gemimg_async.testing")
    assert [n for n in testing.__all__ if not hasattr(testing, n)] == []
    assert testing.__all__ == sorted(testing.__all__, key=isort_key)


def test_version_is_the_installed_version():
    """__version__ is a non-empty string matching the installed distribution."""
    from importlib.metadata import version  # noqa: PLC0415 - only this test needs it

    assert gemimg_async.__version__ == version("gemimg-async")
    assert gemimg_async.__version__
