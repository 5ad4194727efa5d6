"""Old import paths keep working for one release: each moved name is found at its old place, is the very object
at its new home, and warns with a DeprecationWarning that names the new home."""
import importlib

import pytest

from helpers._moved import MOVED, new_home

OLD_NAMES = [(old, name) for old, homes in MOVED.items() for names in homes.values() for name in names.split()]


@pytest.mark.parametrize("old, name", OLD_NAMES, ids=[f"{old}.{name}" for old, name in OLD_NAMES])
def test_a_moved_name_is_found_at_its_old_place_with_a_warning(old, name):
    home = new_home(old, name)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} has moved to {home}\.{name}"):
        found = getattr(importlib.import_module(old), name)
    assert found is getattr(importlib.import_module(home), name)


def test_from_import_of_an_old_path_works_too():
    with pytest.warns(DeprecationWarning, match="helpers.lessons.l01_vit_theory"):
        from helpers.scratch import ScratchViT
    from helpers.lessons.l01_vit_theory import ScratchViT as new
    assert ScratchViT is new


def test_a_name_that_never_existed_is_still_an_attribute_error():
    from helpers import train
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        train.fitt


def test_names_still_at_home_do_not_warn(recwarn):
    from helpers import data, train
    assert train.fit and data.load_dataset
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning) and "helpers" in str(w.message)]
