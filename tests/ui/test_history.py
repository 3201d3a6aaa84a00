"""History and region edit in the app, through their handlers on the tiny model (no browser): delete
removes exactly one result of the user's own folder and refuses everything else, the zip holds the
user's results within its bounds, Reuse seed and Vary fill and make the right things, and a region
edit from the panel keeps every pixel outside its box."""
import html
import json
import os
import uuid
import zipfile
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from ideogram_app.limits import DEFAULT_LIMITS
from ideogram_app.pipeline.metadata import attach_metadata, make_record
from ideogram_app.pipeline.region import FEATHER_TOKENS
from ideogram_app.ui.generation import StopSignals
from ideogram_app.ui.history import (HistoryPanel, NotYourResult, delete_result, owned_result, settings_from_record,
                                     zip_results)
from ideogram_app.ui.region_edit import RegionEditPanel, caption_elements, edited_caption, element_at
from ideogram_app.ui.results import list_results, output_dir, owner_folder, results_dir, save_results
from ideogram_app.ui.tabs.compose import ComposeTab
from ideogram_app.ui.wiring import Components

CAPTION = {
    "high_level_description": "A poster",
    "compositional_deconstruction": {
        "background": "plain blue",
        "elements": [
            {"type": "obj", "bbox": [50, 50, 300, 300], "desc": "a red circle"},
            {"type": "text", "bbox": [500, 250, 750, 750], "text": "HELLO", "desc": "bold serif"},
        ],
    },
}
SIZE = dict(width=256, height=256, preset="turbo", num_inference_steps=3)


def no_progress(*args, **kwargs):
    return None


def view(results, index):
    return {"selected_result": index, "result_settings": None, "overlay": None}


@pytest.fixture
def browser_id():
    return uuid.uuid4().hex


@pytest.fixture
def folder(browser_id):
    return results_dir(owner_folder(None, browser_id))


def fake_results(folder: Path, count: int, seed: int = 1) -> list[dict]:
    images = [attach_metadata(Image.new("RGB", (32, 32), (10 * i, 0, 0)),
                              make_record("a red apple", "text", {"seed": seed + i, "width": 64, "height": 64,
                                                                  "preset": "turbo"}))
              for i in range(count)]
    return save_results(images, folder)


def test_delete_removes_only_that_result_and_its_overlay(folder):
    first, second = fake_results(folder, 2)
    overlay = Path(first["path"]).with_name(Path(first["path"]).stem + "-overlay.png")
    Image.new("RGB", (8, 8)).save(overlay)
    (folder / "notes.txt").write_text("mine")
    assert delete_result(folder, first["path"]) == [Path(first["path"]).name, overlay.name]
    assert sorted(p.name for p in folder.iterdir()) == sorted([Path(second["path"]).name, "notes.txt"])
    with pytest.raises(NotYourResult, match="is not one of your results"):
        delete_result(folder, first["path"])  # already gone


def test_paths_outside_the_users_folder_are_refused(folder, tmp_path):
    other = results_dir(owner_folder("dave"))
    (bob,) = fake_results(other, 1)
    (mine,) = fake_results(folder, 1)
    outside = tmp_path / Path(mine["path"]).name
    outside.write_bytes(b"x")
    link = folder / "ideogram-0123456789ab.png"
    link.symlink_to(outside)
    bob_name = Path(bob["path"]).name
    for attempt in (folder / ".." / other.name / bob_name, bob["path"], outside, link, folder / "notes.txt",
                    folder / (Path(mine["path"]).stem + "-overlay.png"), folder, "/etc/passwd"):
        with pytest.raises(NotYourResult) as err:
            delete_result(folder, attempt)
        assert str(output_dir()) not in str(err.value) and str(tmp_path) not in str(err.value)
    assert Path(bob["path"]).is_file() and outside.is_file() and link.is_symlink() and Path(mine["path"]).is_file()
    assert owned_result(folder, mine["path"]) == Path(mine["path"])


def test_confirm_delete_is_checked_on_the_server(browser_id, folder):
    panel = HistoryPanel(None, None, StopSignals(), view)
    (bob,) = fake_results(results_dir(owner_folder("bob")), 1)
    mine = fake_results(folder, 2)
    asked = panel.on_delete(mine, 0)
    assert asked["history_pending"] == Path(mine[0]["path"]).name
    assert asked["history_confirm"]["visible"] is True and "cannot be undone" in html.unescape(asked["history_status"])
    assert panel.on_cancel_delete()["history_pending"] is None
    assert all(Path(r["path"]).is_file() for r in mine)
    with pytest.raises(gr.Error, match="is not one of your results"):  # a pending name sent by a hostile page
        panel.on_confirm_delete(browser_id, f"../user-bob/{Path(bob['path']).name}")
    assert Path(bob["path"]).is_file()
    done = panel.on_confirm_delete(browser_id, asked["history_pending"])
    assert [r["path"] for r in done["results"]] == [mine[1]["path"]] and not Path(mine[0]["path"]).exists()
    assert done["history_confirm"]["visible"] is False and done["selected_result"] is None
    # Under a login the user's folder is user-<name>: bob's result is deleted from bob's session only.
    with pytest.raises(gr.Error, match="is not one of your results"):
        panel.on_confirm_delete(browser_id, Path(bob["path"]).name)
    panel.on_confirm_delete(None, Path(bob["path"]).name, request=gr.Request(username="bob"))
    assert not Path(bob["path"]).exists()


def test_zip_holds_the_users_results_newest_first_within_the_bounds(folder):
    results = fake_results(folder, 3)
    for age, record in enumerate(reversed(results)):  # distinct times: oldest first in `results`
        os.utime(record["path"], ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
    (folder / "notes.txt").write_text("not a result")
    Image.new("RGB", (8, 8)).save(folder / (Path(results[0]["path"]).stem + "-overlay.png"))
    names = [Path(r["path"]).name for r in results]
    path, included, left_out = zip_results(folder)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == names[::-1] and left_out == 0
        assert archive.read(names[0]) == Path(results[0]["path"]).read_bytes()
    path, included, left_out = zip_results(folder, max_files=2)
    assert included == names[:0:-1] and left_out == 1
    size = Path(results[2]["path"]).stat().st_size
    assert zip_results(folder, max_bytes=size)[1:] == ([names[2]], 2)
    empty = results_dir(owner_folder(None, uuid.uuid4().hex))
    assert zip_results(empty) == (None, [], 0)


def test_download_all_handler(browser_id, folder):
    panel = HistoryPanel(None, None, StopSignals(), view)
    assert panel.on_download_all(browser_id)["history_status"] == "You have no results yet."
    fake_results(folder, 2)
    out = panel.on_download_all(browser_id)
    assert out["history_status"] == "2 result(s) in the zip." and out["history_file"]["visible"] is True
    with zipfile.ZipFile(out["history_file"]["value"]) as archive:
        assert len(archive.namelist()) == 2


def test_reuse_seed_fills_the_seed_and_fixes_it(folder):
    panel = HistoryPanel(None, None, StopSignals(), view)
    results = fake_results(folder, 2, seed=41)
    out = panel.on_reuse_seed(results, 1)
    assert (out["seed"], out["randomize"]) == (42, False)
    with pytest.raises(gr.Error, match="Select a result in the gallery first"):
        panel.on_reuse_seed(results, None)


def test_compare_offers_the_two_newest_and_refuses_unknown_names(folder):
    panel = HistoryPanel(None, None, StopSignals(), view)
    results = fake_results(folder, 3)
    out = panel.on_results_changed(results)
    names = [Path(r["path"]).name for r in results]
    assert [value for _, value in out["compare_before"]["choices"]] == names[::-1]
    assert (out["compare_before"]["value"], out["compare_after"]["value"]) == (names[1], names[2])
    assert out["compare"] == (results[1]["path"], results[2]["path"])
    assert panel.on_compare(results, names[0], names[2])["compare"] == (results[0]["path"], results[2]["path"])
    with pytest.raises(gr.Error, match="not in your history"):
        panel.on_compare(results, "../../etc/passwd", names[0])


def test_the_compose_tab_builds_with_both_panels(loaded_slot):
    with gr.Blocks() as demo:
        ui = Components(demo)
        ComposeTab(loaded_slot).build(ui)
    for name in ("history_vary", "history_confirm", "compare", "region_element", "region_run"):
        assert name in ui


@pytest.fixture(scope="module")
def made(loaded_slot, tmp_path_factory):
    """One real result of the tiny model in a fresh browser folder: (browser id, folder, results)."""
    browser_id = uuid.uuid4().hex
    with pytest.MonkeyPatch.context() as patch:  # the folder the autouse fixture of tests/ui/conftest.py names
        patch.setenv("IDEOGRAM_OUTPUT_DIR", str(tmp_path_factory.getbasetemp() / "outputs"))
        folder = results_dir(owner_folder(None, browser_id))
    image = loaded_slot.require().pipe(CAPTION, seed=7, **SIZE)
    save_results([image], folder)
    return browser_id, folder, list_results(folder)


def test_settings_from_a_record_remake_the_result(loaded_slot, made):
    _, _, results = made
    record = results[0]
    again = loaded_slot.require().pipe(record["prompt"], settings=settings_from_record(record["settings"], seed=7))
    assert again.tobytes() == Image.open(record["path"]).convert("RGB").tobytes()


def test_vary_keeps_prompt_and_settings_with_a_new_seed(loaded_slot, made):
    browser_id, folder, results = made
    panel = HistoryPanel(loaded_slot, DEFAULT_LIMITS, StopSignals(), view)
    out = panel.on_vary(browser_id, results, 0, progress=no_progress)
    new = out["results"][-1]
    assert len(out["results"]) == len(list_results(folder)) and out["selected_result"] == len(out["results"]) - 1
    assert new["prompt"] == results[0]["prompt"] and new["settings"]["seed"] != 7
    for key in ("width", "height", "preset", "steps", "guidance", "mu", "std"):
        assert new["settings"][key] == results[0]["settings"][key], key
    assert "(the original has seed 7)" in html.unescape(out["history_status"])
    Path(new["path"]).unlink()


def test_region_edit_panel_changes_only_the_chosen_box(loaded_slot, made):
    browser_id, folder, results = made
    panel = RegionEditPanel(loaded_slot, DEFAULT_LIMITS, StopSignals(), view)
    shown = panel.on_result_changed(results, 0)
    assert [label for label, _ in shown["region_element"]["choices"]] == ["1 · obj · a red circle",
                                                                          "2 · text · HELLO"]
    assert (shown["region_picked"], shown["region_text"], shown["region_desc"]) == (0, "", "a red circle")
    assert panel.on_result_changed(results, 0, 1)["region_picked"] == 1  # a picked element stays picked
    assert panel.on_element_picked(results, 0, 1) == {"region_picked": 1, "region_text": "HELLO",
                                                      "region_desc": "bold serif"}
    assert panel.on_overlay_click(results, 0, gr.SelectData(None, {"index": [100, 160], "value": None})) == \
        {"region_element": 1, "region_picked": 1, "region_text": "HELLO", "region_desc": "bold serif"}
    assert panel.on_overlay_click(results, 0, gr.SelectData(None, {"index": "junk", "value": None})) == {}
    out = panel.on_regenerate(browser_id, results, 0, 1, "BYE", "thin red script", 0.9, 5, progress=no_progress)
    new = out["results"][-1]
    assert json.loads(new["prompt"])["compositional_deconstruction"]["elements"][1]["text"] == "BYE"
    assert new["settings"]["edit_region"] == [500, 250, 750, 750] and new["settings"]["seed"] == 5
    assert html.unescape(out["region_status"]).startswith("Regenerated box 2 ([500, 250, 750, 750] of 1000) at "
                                                          "strength 0.9, seed 5.")
    before = Image.open(results[0]["path"]).convert("RGB").load()
    after = Image.open(new["path"]).convert("RGB").load()
    margin = 16 * (FEATHER_TOKENS + 1)  # box: y 128..192, x 64..192 px
    changed_outside = [(x, y) for y in range(256) for x in range(256)
                       if not (128 - margin <= y < 192 + margin and 64 - margin <= x < 192 + margin)
                       and max(abs(a - b) for a, b in zip(before[x, y], after[x, y])) > 1]
    inside = [sum(abs(a - b) for a, b in zip(before[x, y], after[x, y])) / 3 for y in range(128, 192)
              for x in range(64, 192)]
    assert changed_outside == [] and sum(inside) / len(inside) > 10
    Path(new["path"]).unlink()


def test_region_edit_refuses_a_result_outside_the_users_folder(loaded_slot, made, tmp_path):
    browser_id, _, results = made
    panel = RegionEditPanel(loaded_slot, DEFAULT_LIMITS, StopSignals(), view)
    other = results_dir(owner_folder("carol"))
    foreign = [{**results[0], "path": str(other / Path(results[0]["path"]).name)}]
    Path(foreign[0]["path"]).write_bytes(Path(results[0]["path"]).read_bytes())
    with pytest.raises(gr.Error, match="is not one of your results"):
        panel.on_regenerate(browser_id, foreign, 0, 1, "X", "y", 0.9, 5, progress=no_progress)
    with pytest.raises(gr.Error, match="Region strength: denoising_strength must be in \\(0, 1\\]"):
        panel.on_regenerate(browser_id, results, 0, 1, "X", "y", 1.5, 5, progress=no_progress)
    with pytest.raises(gr.Error, match="Pick the element"):
        panel.on_regenerate(browser_id, results, 0, 7, "X", "y", 0.9, 5, progress=no_progress)


def test_caption_helpers():
    caption, choices = caption_elements(json.dumps(CAPTION))
    assert [index for _, index in choices] == [0, 1]
    new, box = edited_caption(caption, 0, "ignored for obj", "a blue square")
    assert box == [50, 50, 300, 300] and new["compositional_deconstruction"]["elements"][0] == \
        {"type": "obj", "bbox": [50, 50, 300, 300], "desc": "a blue square"}
    assert caption["compositional_deconstruction"]["elements"][0]["desc"] == "a red circle"  # a copy
    # Pixels at 256x256: element 1 is y 13..77, x 13..77; element 2 y 128..192, x 64..192.
    assert element_at(caption, choices, 40, 40, 256, 256) == 0
    assert element_at(caption, choices, 100, 160, 256, 256) == 1
    assert element_at(caption, choices, 240, 10, 256, 256) is None
    overlapping = json.loads(json.dumps(caption))
    overlapping["compositional_deconstruction"]["elements"][0]["bbox"] = [0, 0, 1000, 1000]  # behind element 2
    assert element_at(overlapping, choices, 100, 160, 256, 256) == 1  # the smaller box wins
    assert element_at(overlapping, choices, 10, 10, 256, 256) == 0
    assert caption_elements("a plain prompt") == (None, [])
    assert caption_elements(json.dumps({"high_level_description": "x"})) == (None, [])


def test_generate_endpoint_edits_a_region_of_an_earlier_result(client):
    """/generate through gradio_client: `input_image` names an earlier result of the caller's folder (`api/`
    without a login), `edit_region` the box; a name outside that folder is refused."""
    common = (json.dumps(CAPTION), 256, 256, "turbo", 9, 1, None)
    (first,), _ = client.predict(*common, api_name="/generate")
    name = Path(first).name
    (edited,), info = client.predict(*common, name, 0.9, [500, 250, 750, 750], api_name="/generate")
    assert info["images"][0]["edit_region"] == [500, 250, 750, 750] and info["images"][0]["img2img"] is True
    before = Image.open(first).convert("RGB").load()
    after = Image.open(edited).convert("RGB").load()
    margin = 16 * (FEATHER_TOKENS + 1)
    assert all(before[x, y] == after[x, y] for y in range(256) for x in range(256)
               if not (128 - margin <= y < 192 + margin and 64 - margin <= x < 192 + margin))
    for bad, message in ((f"../user-bob/{name}", "is not one of your results on this server"),
                         ("/etc/passwd", "is not one of your results on this server")):
        with pytest.raises(Exception, match=message):
            client.predict(*common, bad, 0.9, [500, 250, 750, 750], api_name="/generate")
    with pytest.raises(Exception, match="edit_region \\[500, 250, 750, 750\\] needs an input_image"):
        client.predict(*common, None, None, [500, 250, 750, 750], api_name="/generate")
