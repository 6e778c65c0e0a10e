"""The package's structure, checked: the import layers of docs/design.md (an import-linter
contract in pyproject.toml), no import cycles, no runtime code on test-only modules, and the
sampling defaults written in one place."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import subprocess
import sys
import typing
from pathlib import Path

import grimp

from idm_vton import defaults

from .conftest import REPO


def test_import_contracts_hold():
    """``lint-imports`` with the contracts of pyproject.toml: each part of idm_vton imports only
    the parts below it, the modules of a package import each other without cycles."""
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports; "
            "raise SystemExit(lint_imports(config_filename='pyproject.toml', no_cache=True, "
            "no_logo=True))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "3 kept, 0 broken" in report, report


def test_the_contract_sees_imports_made_inside_functions():
    """An import inside a function is an edge of the graph the contracts are checked on (grimp
    reads every import statement): a lazy import cannot hide a dependency."""
    graph = grimp.build_graph("idm_vton", cache_dir=None)
    # Both are made inside a function only (the commands keep their start-up light).
    assert graph.direct_import_exists(
        importer="idm_vton.commands.tryon", imported="idm_vton.pipelines.loading"
    )
    assert graph.direct_import_exists(
        importer="idm_vton.pipelines.loading", imported="idm_vton.models.tiny"
    )


def _imported_modules(path) -> set[str]:
    """Every module (or module.name) an import statement of the file names, wherever the
    statement is (inside functions too); relative imports resolved against the file's package."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = [node.module] if node.module else []
            if node.level:
                package = path.relative_to(REPO / "src").parent.parts
                base = [*package[: len(package) - node.level + 1], *base]
            module = ".".join(base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _is_test_support(module: str) -> bool:
    return module == "idm_vton.testing" or module.startswith("idm_vton.testing.")


def test_only_tests_and_benchmarks_use_the_test_support_package():
    """``idm_vton.testing`` (reference formulations, shape presets) is for tests and benchmarks:
    no module of the package, script or example imports it, and no name ``idm_vton`` exports
    comes from it (the tiny model is in the library)."""
    import idm_vton

    test_only = (REPO / "tests", REPO / "benchmarks", REPO / "src" / "idm_vton" / "testing")
    files = [
        p
        for folder in (REPO / "src", REPO / "examples")
        for p in folder.rglob("*.py")
        if not any(p.is_relative_to(t) for t in test_only)
    ]
    assert any(p.name == "tryon.py" for p in files)  # the package itself was found
    users = {
        str(p.relative_to(REPO)): sorted(filter(_is_test_support, _imported_modules(p)))
        for p in files
    }
    assert {path: names for path, names in users.items() if names} == {}
    exported = {name: getattr(idm_vton, name).__module__ for name in idm_vton.__all__}
    assert {n: m for n, m in exported.items() if _is_test_support(m)} == {}


def test_the_sampling_defaults_have_one_home():
    """The reference's 30 steps and guidance 2.0 (and the command line's seed and dataset work
    size) are written in idm_vton.defaults; the pipeline, the flags, dataset inference, the server's
    settings and the API's documentation all say the same."""
    from idm_vton.commands.main import build_parser
    from idm_vton.evaluation.infer_dataset import DatasetInferenceConfig
    from idm_vton.pipelines.tryon import TryOnPipeline
    from idm_vton.serving.api import TryOnFields
    from idm_vton.serving.config import ServeConfig

    assert (defaults.NUM_INFERENCE_STEPS, defaults.GUIDANCE_SCALE) == (30, 2.0)
    steps, guidance = defaults.NUM_INFERENCE_STEPS, defaults.GUIDANCE_SCALE

    call = inspect.signature(TryOnPipeline.__call__).parameters
    assert call["num_inference_steps"].default == steps
    assert call["guidance_scale"].default == guidance
    assert call["negative_prompt"].default == defaults.NEGATIVE_PROMPT

    args = build_parser().parse_args(["tryon", "--person", "p", "--garment", "g", "--out", "o"])
    assert (args.steps, args.guidance, args.seed) == (steps, guidance, defaults.SEED)
    # (tryon's work size defaults to the model's own: 1024 x 768 for SDXL, 256 x 192 for tiny)

    fields = {f.name: f.default for f in dataclasses.fields(DatasetInferenceConfig)}
    assert (fields["steps"], fields["guidance"], fields["seed"]) == (steps, guidance, defaults.SEED)
    assert (fields["height"], fields["width"]) == (defaults.WORK_HEIGHT, defaults.WORK_WIDTH)

    config = ServeConfig()
    assert (config.default_steps, config.default_guidance) == (steps, guidance)
    hints = typing.get_type_hints(TryOnFields, include_extras=True)
    described = {name: hints[name].__metadata__[0].description for name in ("steps", "guidance")}
    assert f"(default {steps})" in described["steps"]
    assert f"(default {guidance})" in described["guidance"]


def test_no_text_cites_a_document_users_do_not_have():
    """Code, docs and messages cite the paper, the official code or this project's own docs:
    never the internal reference notes ("SPEC section N", "SPEC §N", "SPEC.md")."""
    cited = re.compile(r"\bSPEC(\.md)?\b")
    places = [REPO / "README.md"] + [
        p
        for folder in ("src", "docs", "tests", "benchmarks", "examples")
        for p in (REPO / folder).rglob("*")
        if p.suffix in (".py", ".md", ".txt", ".json", ".toml") and p.is_file()
    ]
    assert len(places) > 100
    found = [
        f"{p.relative_to(REPO)}:{number}"
        for p in places
        for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if cited.search(line) and p != Path(__file__)
    ]
    assert found == []
