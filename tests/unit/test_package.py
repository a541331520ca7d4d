"""tools/package.py: the archives terraform deploys are reproducible and self-contained."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools import function_requirements as reqs

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = [sys.executable, str(ROOT / "tools" / "package.py")]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    for out in (first, second):
        subprocess.run([*PACKAGE, str(out)], check=True, capture_output=True)
    return first, second


@pytest.mark.parametrize("name", ["submit", "notify", "worker"])
def test_the_same_tree_gives_the_same_bytes(built, name):
    first, second = built
    assert (first / f"{name}.zip").read_bytes() == (second / f"{name}.zip").read_bytes()


@pytest.mark.parametrize("name", ["submit", "notify"])
def test_a_function_archive_holds_its_entry_points_the_package_and_schemas(built, name):
    names = zipfile.ZipFile(built[0] / f"{name}.zip").namelist()
    assert {"main.py", "requirements.txt", "ltxv/__init__.py", "schemas/job.schema.json"} <= set(
        names
    )
    assert not [n for n in names if n.startswith("ltxv/local/") or "__pycache__" in n]
    # Only the core and the function's own part: no client, CLI or the other function's.
    parts = {n.split("/")[1] for n in names if n.startswith("ltxv/") and n.count("/") > 1}
    assert parts == {"core", {"submit": "intake", "notify": "notify"}[name]}


def test_editing_the_client_or_the_cli_redeploys_no_function(tmp_path):
    """A function archive's hash is terraform's redeploy trigger: a change outside the
    function's parts leaves its bytes alone, a change inside them does not."""
    tree = tmp_path / "tree"
    for folder in ("functions", "src", "schemas", "tools"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    package = [sys.executable, str(tree / "tools" / "package.py")]

    def digests(out: str) -> dict[str, bytes]:
        subprocess.run([*package, str(tmp_path / out), "submit", "notify"], check=True)
        return {n: (tmp_path / out / f"{n}.zip").read_bytes() for n in ("submit", "notify")}

    before = digests("before")
    for edited in ("cli/jobs.py", "client/client.py", "local/stack.py"):
        with (tree / "src" / "ltxv" / edited).open("a") as file:
            file.write("# edited\n")
    assert digests("after-client") == before
    with (tree / "src" / "ltxv" / "core" / "jobs.py").open("a") as file:
        file.write("# edited\n")
    after = digests("after-core")
    assert after["submit"] != before["submit"] and after["notify"] != before["notify"]


def test_the_submit_archive_carries_the_web_page(built):
    names = set(zipfile.ZipFile(built[0] / "submit.zip").namelist())
    web = ROOT / "src" / "ltxv" / "intake" / "web"
    files = {f"ltxv/intake/web/{p.relative_to(web)}" for p in web.rglob("*") if p.is_file()}
    files = {n for n in files if "__pycache__" not in n}
    page = {"index.html", "assets/app.js", "assets/style.css"}
    assert {f"ltxv/intake/web/{name}" for name in page} <= files
    assert files <= names


def test_the_unpacked_submit_archive_serves_its_own_page_files(built, tmp_path):
    zipfile.ZipFile(built[0] / "submit.zip").extractall(tmp_path)
    probe = (
        "import sys; sys.path.insert(0, '.'); from ltxv.intake import web; "
        "assert web.__file__.startswith(sys.argv[1]), web.__file__; "
        "assert {'index.html', 'app.js', 'style.css'} <= set(web.assets())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


ENTRY_POINTS = [
    ("submit", ["api", "prompt_file", "redispatch"]),
    ("notify", ["result_ready", "dead_letter"]),
]


@pytest.mark.parametrize(("name", "targets"), ENTRY_POINTS)
def test_a_function_archive_imports_on_its_own(built, tmp_path, name, targets):
    # Unpacked as Cloud Functions unpacks it: its own ltxv and schemas, not this checkout's.
    zipfile.ZipFile(built[0] / f"{name}.zip").extractall(tmp_path)
    probe = (
        "import sys; sys.path.insert(0, '.'); import main, ltxv, ltxv.core.schemas as s; "
        "assert ltxv.__file__.startswith(sys.argv[1]), ltxv.__file__; "
        "assert str(s.schemas_dir()).startswith(sys.argv[1]); "
        # Settings name every resource from the table terraform reads too.
        "from ltxv.core.settings import Settings; assert Settings().topic == 'ltxv-jobs'; "
        f"assert all(callable(getattr(main, t)) for t in {targets!r})"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_worker_archive_is_an_installable_source_tree(built):
    names = set(zipfile.ZipFile(built[0] / "worker.zip").namelist())
    # With the files the boot script installs from it (gpu_worker/vm/boot/60-workers.sh).
    assert {"pyproject.toml", "gpu_worker/__main__.py", "gpu_worker/vm/ltxv-worker@.service",
            "gpu_worker/vm/ops-agent.yaml", "src/ltxv/__init__.py",
            "schemas/model-profiles.json"} <= names  # fmt: skip


def test_terraform_mode_answers_json(tmp_path):
    import json

    result = subprocess.run(
        [*PACKAGE, "--terraform"],
        input=json.dumps({"target": "notify", "out_dir": str(tmp_path)}),
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(result.stdout)
    assert set(answer) == {"path", "md5", "sha256"}
    assert Path(answer["path"]) == tmp_path / "notify.zip"
    assert all(isinstance(v, str) for v in answer.values())


@pytest.mark.parametrize("name", reqs.FUNCTIONS)
def test_a_function_requirements_file_is_pyprojects_dependencies_pinned(name):
    assert reqs.problems(reqs.requirements_file(name), reqs.dependencies(name)) == []


def test_nothing_notify_imports_needs_what_only_submit_installs():
    """Import notify's entry points in a fresh interpreter in which the submit-only
    packages cannot be imported: a module of theirs reaching for one would fail here, as
    it would deployed."""
    blocked = sorted({"av", "PIL"})
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "sys.path[:0] = ['functions/notify']\n"
        "import main\n"
        "from ltxv.notify import compose\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=reqs.ROOT, check=True)
    assert {"av", "pillow"} == set(reqs.SUBMIT_ONLY)
    assert not set(reqs.SUBMIT_ONLY) & set(reqs.dependencies("notify"))


def test_the_requirements_check_sees_each_kind_of_drift(tmp_path):
    wanted = reqs.dependencies()
    pins = reqs.read_pins(reqs.requirements_file("submit").read_text())
    path = tmp_path / "requirements.txt"
    path.write_text(reqs.render(pins))
    assert reqs.problems(path, wanted) == []
    first, *_ = sorted(pins)
    drifts = {
        "missing": {name: v for name, v in pins.items() if name != first},
        "not in pyproject.toml": {**pins, "left-pad": "1.0"},
        "is outside": {**pins, "requests": "9.0"},
    }
    for problem, drifted in drifts.items():
        path.write_text(reqs.render(drifted))
        assert problem in " ".join(reqs.problems(path, wanted))
    path.write_text(reqs.render(pins).replace("==", ">=", 1))
    assert "not pinned" in " ".join(reqs.problems(path, wanted))
    path.write_text(reqs.render(pins).replace("# Generated", "# Hand-edited"))
    assert "not as `make requirements` writes it" in " ".join(reqs.problems(path, wanted))
