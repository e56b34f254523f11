"""The model repository on disk (server/repository.py): Triton's layout, bare directories as
version 1, the version policy, the settings that name a repository, and what polling compares."""

from __future__ import annotations

import pytest

from server.modeldir import ModelDirError
from server.repository import (
    Repository,
    VersionPolicy,
    default_name,
    fingerprint,
    pick_model,
    repository_for,
)
from server.settings import DEMO_MODEL_DIR, DEMO_PHOTO_MODEL_DIR, DEMO_REPOSITORY, Settings
from tests.server.fake_model import write_fake_model_dir


@pytest.mark.parametrize(
    ("text", "versions", "served"),
    [
        ("latest:1", ["1", "3", "2"], ["3"]),
        ("latest:2", ["1", "3", "10"], ["3", "10"]),  # numbers, not strings: 10 is the newest
        ("latest:5", ["2"], ["2"]),
        ("all", ["2", "1"], ["1", "2"]),
        ("specific:1,3", ["1", "2", "3"], ["1", "3"]),
        ("specific:4", ["1", "2"], []),
    ],
)
def test_version_policy_picks_as_tritons(text, versions, served):
    policy = VersionPolicy.parse(text)
    assert policy.select(versions) == served
    assert VersionPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    "text", ["latest:0", "latest:x", "newest", "specific:", "specific:0", "all:2"]
)
def test_a_bad_version_policy_is_refused_with_the_forms_named(text):
    with pytest.raises(ValueError, match="latest:N"):
        VersionPolicy.parse(text)
    with pytest.raises(ValueError, match="model_version_policy"):
        Settings(model_version_policy=text)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_model_dir(tmp_path_factory.mktemp("fake") / "model")


def test_scan_finds_versions_bare_directories_and_links_and_skips_the_rest(tmp_path, fake):
    root = tmp_path / "repo"
    for version in ("1", "3"):
        (root / "multi" / version).mkdir(parents=True)
    (root / "multi" / "notes").mkdir()  # not a number: not a version
    (root / "multi" / ".4").mkdir()  # a version being written: skipped until renamed
    (root / "bare").symlink_to(fake)  # a model directory itself: version 1
    (root / ".hidden" / "1").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "README.md").write_text("not a model")
    found = Repository(root=root).scan()
    assert list(found) == ["bare", "multi"]
    assert found["bare"] == {"1": root / "bare"}
    assert found["multi"] == {"1": root / "multi" / "1", "3": root / "multi" / "3"}


def test_settings_name_the_repository(tmp_path, fake):
    assert repository_for(Settings()).root == DEMO_REPOSITORY  # make serve: the demo's
    single = repository_for(Settings(model_dir=fake))
    assert single.scan() == {"ase-fake": {"1": fake}}  # named by its metadata
    with pytest.raises(ValueError, match="not both"):
        Settings(model_dir=fake, model_repository=tmp_path)
    with pytest.raises(ValueError, match="workers 1"):
        Settings(model_control_mode="explicit", workers=2)


def test_the_demo_repository_serves_the_photo_model_by_default():
    found = Repository(root=DEMO_REPOSITORY).scan()
    assert found["ase-demo"] == {"1": DEMO_REPOSITORY / "ase-demo"}
    assert (DEMO_REPOSITORY / "ase-demo").resolve() == DEMO_MODEL_DIR.resolve()  # a link
    assert (DEMO_REPOSITORY / "ase-photo").resolve() == DEMO_PHOTO_MODEL_DIR.resolve()
    photo = pick_model(Settings())
    assert (photo.name, photo.version) == ("ase-photo", "1")
    assert photo.metadata.dataset == "scenes_and_photos"
    demo = pick_model(Settings(), "ase-demo")
    assert (demo.name, demo.version, demo.checkpoint) == ("ase-demo", "1", "1250-1434f6a9")
    # Elsewhere the first by name, unless named: the photo model is the demo repository's choice.
    assert default_name(Settings(model_repository=DEMO_REPOSITORY), sorted(found)) == "ase-demo"
    assert default_name(Settings(default_model="ase-demo"), sorted(found)) == "ase-demo"


def test_pick_model_names_what_exists(tmp_path, fake):
    root = tmp_path / "repo"
    (root / "a").mkdir(parents=True)
    for version in ("1", "2"):
        (root / "a" / version).symlink_to(fake)
    settings = Settings(model_repository=root)
    assert pick_model(settings).version == "2"
    assert pick_model(settings, "a", "1").version == "1"
    with pytest.raises(ModelDirError, match="no model 'b' in the repository .* holds a"):
        pick_model(settings, "b")
    with pytest.raises(ModelDirError, match="no version '7'; it has 1, 2"):
        pick_model(settings, "a", "7")


def test_fingerprint_changes_with_the_files(tmp_path):
    (tmp_path / "metadata.json").write_text("{}")
    before = fingerprint(tmp_path)
    assert before == fingerprint(tmp_path)
    (tmp_path / "model.dense.onnx").write_bytes(b"x" * 10)
    assert fingerprint(tmp_path) != before
    assert fingerprint(tmp_path / "gone") == ()
