from pathlib import Path

import pytest

from featurestore.errors import InputError
from featurestore.sources import expand_sources


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_directory_is_recursive_and_filters_extensions(tmp_path):
    a = _touch(tmp_path / "d" / "a.jpg")
    b = _touch(tmp_path / "d" / "sub" / "b.PNG")
    _touch(tmp_path / "d" / "notes.txt")
    _touch(tmp_path / "d" / ".hidden" / "c.jpg")
    assert expand_sources([tmp_path / "d"]) == [str(a), str(b)]


def test_explicit_files_are_kept_whatever_the_extension_and_missing_ones_too(tmp_path):
    t = _touch(tmp_path / "x.dat")
    missing = tmp_path / "gone.jpg"
    # a missing file is not an error here: it becomes an error row when read
    assert expand_sources([t, missing]) == [str(t), str(missing)]


def test_paths_come_back_absolute_and_normalised_with_symlinks_kept(tmp_path, monkeypatch):
    a = _touch(tmp_path / "real" / "a.jpg")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path / "real")
    assert expand_sources(["a.jpg", "./../link/a.jpg", "../link"]) == [str(a), str(tmp_path / "link" / "a.jpg")]


def test_inputs_that_all_do_not_exist_are_an_error_and_some_missing_are_not(tmp_path):
    a = _touch(tmp_path / "a.jpg")
    with pytest.raises(InputError, match=r"none of the inputs exists: .*gone\.jpg, .*lost\.png"):
        expand_sources([tmp_path / "gone.jpg", tmp_path / "lost.png", str(tmp_path / "no*.jpg")])
    assert expand_sources([tmp_path / "gone.jpg", a]) == [str(tmp_path / "gone.jpg"), str(a)]


def test_globs_and_dedup(tmp_path):
    a = _touch(tmp_path / "a1.jpg")
    b = _touch(tmp_path / "a2.jpg")
    _touch(tmp_path / "b1.jpg")
    assert expand_sources([str(tmp_path / "a*.jpg"), str(a)]) == [str(a), str(b)]


def test_list_file_relative_to_itself_with_comments(tmp_path):
    a = _touch(tmp_path / "imgs" / "a.jpg")
    b = _touch(tmp_path / "imgs" / "more" / "b.jpg")
    lst = tmp_path / "list.txt"
    lst.write_text("# my images\nimgs/a.jpg\n\nimgs/more\n")
    assert expand_sources([f"@{lst}"]) == [str(a), str(b)]


def test_unreadable_list_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="cannot read list file @.*nope.txt"):
        expand_sources([f"@{tmp_path / 'nope.txt'}"])


def test_nothing_found_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image or video files found"):
        expand_sources([tmp_path / "empty"])
    with pytest.raises(InputError, match="no inputs given"):
        expand_sources([])
