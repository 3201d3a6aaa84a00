"""The layout canvas in Debian's chromium at 1440×900 against the really launched app: snapping (exact, with
guides; Alt places freely), Shift-drag draws inside a box, a colour per element, handles clear of labels, Ctrl+D
clear of the original's label, the layers list (reorder, hide, lock), multi-select with align and distribute,
and one server round trip per gesture. Expectations are hand-computed in model units; the caption checked is
the JSON the server sends back to the editor, and the operation the page sent (its queue request)."""
import json

import pytest

from tests.ui.conftest import ARTIFACTS, free_port

pytestmark = pytest.mark.browser
JSON_BOX = "#caption-json textarea"
CANVAS = "#layout-canvas"
VIEWPORT = {"width": 1440, "height": 900}  # conftest's `page` opens this window size


def shot(page, name: str) -> None:
    """A screenshot of the canvas component alone (test-artifacts/NAME.png)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(CANVAS).screenshot(path=str(ARTIFACTS / f"{name}.png"))


def elements(page) -> list[dict]:
    return json.loads(page.locator(JSON_BOX).input_value())["compositional_deconstruction"]["elements"]


def load(page, *boxes: tuple[str, list[int]]) -> None:
    """Paste a caption with these (type, bbox) elements and wait until the canvas draws them."""
    items = [{"type": kind, "bbox": bbox, "desc": f"element {i + 1}", **({"text": f"T{i + 1}"} if kind == "text" else {})}
             for i, (kind, bbox) in enumerate(boxes)]
    field = page.locator(JSON_BOX)
    field.fill(json.dumps({"compositional_deconstruction": {"background": "grey", "elements": items}}))
    field.press("Tab")
    page.wait_for_function(f"() => document.querySelectorAll('{CANVAS} .lc-box').length === {len(boxes)}")
    page.locator(f"{CANVAS} .lc-stage").scroll_into_view_if_needed()


def wait_json(page, predicate: str) -> list[dict]:
    """Wait until `predicate` (JS, over `els`, the editor's element list) holds; return the elements."""
    page.wait_for_function(f"""() => {{ try {{ const els = JSON.parse(document.querySelector('{JSON_BOX}').value)
        .compositional_deconstruction.elements; return {predicate}; }} catch (e) {{ return false; }} }}""")
    return elements(page)


class Stage:
    """Screen position of model units (0-1000) on the stage."""

    def __init__(self, page):
        box = page.locator(f"{CANVAS} .lc-stage").bounding_box()
        self.left, self.top, self.w, self.h = box["x"], box["y"], box["width"], box["height"]

    def at(self, x_units: float, y_units: float) -> tuple[float, float]:
        return self.left + x_units * self.w / 1000, self.top + y_units * self.h / 1000


def drag(page, start, end, steps=6):
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=steps)
    page.mouse.move(*end, steps=steps)
    page.mouse.up()


def sent_ops(page) -> list[dict]:
    """Collects the canvas operations the page sends to the server (the data of its queue requests)."""
    ops: list[dict] = []

    def seen(request):
        if "/queue/join" in request.url and request.method == "POST":
            body = request.post_data_json or {}
            if isinstance(body.get("event_data"), dict) and "op" in body["event_data"]:
                ops.append(body["event_data"])
    page.on("request", seen)
    return ops


def rect(page, selector: str) -> dict:
    """The element's box once it is laid out: the canvas redraws its handles when the server's answer
    to a gesture arrives, and an element caught mid-redraw has no box for a moment."""
    locator = page.locator(selector)
    for _ in range(50):
        locator.wait_for(state="visible")
        box = locator.bounding_box()
        if box is not None:
            return box
        page.wait_for_timeout(100)
    raise AssertionError(f"{selector} never got a layout box")


def overlap(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


def test_a_move_snaps_exactly_onto_a_neighbours_edge_and_alt_places_freely(page):
    load(page, ("obj", [100, 100, 400, 353]), ("obj", [500, 600, 800, 900]))
    ops = sent_ops(page)
    s = Stage(page)
    grab = s.at(750, 650)
    # 3 units short of the neighbour's right edge (353): within the snap distance, off the 25-unit grid
    page.mouse.move(*grab)
    page.mouse.down()
    page.mouse.move(*s.at(750 - 122, 650), steps=4)
    page.mouse.move(*s.at(750 - 244, 650), steps=4)  # x_min 600 - 244 = 356
    guide = page.locator(f"{CANVAS} .lc-guide-x")
    assert guide.count() == 1 and guide.evaluate("g => g.style.left") == "35.3%"  # the guide, during the drag
    assert page.locator(f"{CANVAS} .lc-readout").inner_text() == "[500, 353, 800, 653]"  # and the bbox to be
    page.screenshot(path=str(ARTIFACTS / "canvas-1-snap-guide.png"))  # the viewport: no scrolling mid-drag
    page.mouse.up()
    moved = wait_json(page, "els[1].bbox[1] !== 600")[1]["bbox"]
    assert moved == [500, 353, 800, 653]  # exactly the neighbour's x_max; width kept
    assert ops[-1] == {"op": "move", "index": 1, "rect": [353, 500, 653, 800], "size": [1000, 1000]}

    page.keyboard.down("Alt")  # the same kind of move, 3 units off the first box's right edge again
    drag(page, s.at(500, 650), s.at(500 - 294, 650))  # 353 - 294 = 59: near no box edge, 9 units off the grid
    page.keyboard.up("Alt")
    free = wait_json(page, "els[1].bbox[1] !== 353")[1]["bbox"]
    assert abs(free[1] - 59) <= 1 and free[1] not in (50, 100)  # neither the grid nor an edge pulled it
    assert free[3] - free[1] == 300 and page.locator(f"{CANVAS} .lc-guide").count() == 0
    shot(page, "canvas-2-alt-free")
    assert page.js_errors == []


def test_resize_snaps_to_a_neighbours_edge_and_alt_does_not(page):
    load(page, ("obj", [100, 100, 400, 353]), ("text", [500, 500, 800, 700]))
    s = Stage(page)
    page.locator(f"{CANVAS} .lc-box").nth(1).click(position={"x": 40, "y": 40})
    page.wait_for_selector(f"{CANVAS} .lc-box.lc-selected[data-index='1'] .lc-h-w")
    handle = rect(page, f"{CANVAS} .lc-h-w")
    start = (handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    drag(page, start, (start[0] - 144 * s.w / 1000, start[1]))  # 500 - 144 = 356, 3 units right of 353
    resized = wait_json(page, "els[1].bbox[1] !== 500")[1]["bbox"]
    assert resized == [500, 353, 800, 700]
    handle = rect(page, f"{CANVAS} .lc-h-w")
    start = (handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.keyboard.down("Alt")
    drag(page, start, (start[0] + 3 * s.w / 1000, start[1]))
    page.keyboard.up("Alt")
    free = wait_json(page, "els[1].bbox[1] !== 353")[1]["bbox"]
    assert abs(free[1] - 356) <= 1 and free[1] != 353 and free[2:] == [800, 700]


def test_shift_drag_draws_a_text_box_inside_an_object_box(page):
    load(page, ("obj", [100, 100, 900, 900]))
    page.locator(f"{CANVAS} .lc-type[data-type=text]").click()
    page.locator(f"{CANVAS} .lc-stage").scroll_into_view_if_needed()
    s = Stage(page)
    page.keyboard.down("Shift")
    drag(page, s.at(300, 200), s.at(700, 400))
    page.keyboard.up("Shift")
    els = wait_json(page, "els.length === 2")
    assert els[0]["bbox"] == [100, 100, 900, 900]  # the outer box did not move
    assert els[1]["type"] == "text" and els[1]["bbox"] == [200, 300, 400, 700]  # grid-snapped corners
    page.mouse.click(*s.at(150, 800))  # the outer box selected ...
    page.wait_for_selector(f"{CANVAS} .lc-box.lc-selected[data-index='0']")
    page.mouse.click(*s.at(500, 300))  # ... does not cover the inner one
    page.wait_for_selector(f"{CANVAS} .lc-box.lc-selected[data-index='1']")
    drag(page, s.at(500, 600), s.at(550, 650))  # without Shift a drag inside moves the box under it
    assert wait_json(page, "els[0].bbox[0] !== 100")[0]["bbox"] == [150, 150, 950, 950]
    shot(page, "canvas-3-drawn-inside")


def test_each_element_has_its_colour_handles_clear_the_label_and_duplicates_clear_it_too(page):
    load(page, ("obj", [50, 50, 300, 300]), ("obj", [50, 350, 300, 600]), ("text", [400, 50, 600, 600]),
         ("text", [700, 700, 740, 760]))
    colours = page.locator(f"{CANVAS} .lc-box").evaluate_all("bs => bs.map(b => getComputedStyle(b).borderTopColor)")
    assert len(set(colours)) == 4, colours
    styles = page.locator(f"{CANVAS} .lc-box").evaluate_all("bs => bs.map(b => getComputedStyle(b).borderTopStyle)")
    assert styles == ["solid", "solid", "dashed", "dashed"]  # objects solid, text dashed (the legend says so)
    swatches = page.locator(f"{CANVAS} .lc-layer .lc-swatch").evaluate_all(
        "ss => ss.map(s => getComputedStyle(s).borderTopColor)")
    assert swatches == colours  # the layers list is the legend: the same colour per element

    small = page.locator(f"{CANVAS} .lc-box").nth(3)  # 60×40 units: a few dozen pixels
    small.click(position={"x": 5, "y": 5})
    page.wait_for_selector(f"{CANVAS} .lc-box.lc-selected[data-index='3'] .lc-handle")
    label, handles = page.evaluate(f"""() => {{  // read at one moment: a re-render replaces the nodes
        const box = document.querySelector("{CANVAS} .lc-box[data-index='3']");
        const r = (n) => {{ const b = n.getBoundingClientRect(); return {{x: b.x, y: b.y, width: b.width, height: b.height}}; }};
        return [r(box.querySelector('.lc-label')),
                [...box.querySelectorAll('.lc-handle')].filter(h => h.offsetParent !== null).map(r)];
    }}""")
    assert len(handles) >= 4
    assert not any(overlap(label, handle) for handle in handles), (label, handles)
    shot(page, "canvas-4-colours-small-box")

    page.locator(f"{CANVAS} .lc-box").nth(0).click(position={"x": 60, "y": 60})
    page.wait_for_selector(f"{CANVAS} .lc-box.lc-selected[data-index='0']")
    page.keyboard.press("Control+d")
    els = wait_json(page, "els.length === 5")
    assert els[1]["bbox"][1] == 60 and els[1]["bbox"][0] > 50  # the copy, shifted right and down
    first, copy = rect(page, f"{CANVAS} .lc-box[data-index='0'] .lc-label"), rect(page, f"{CANVAS} .lc-box[data-index='1'] .lc-label")
    assert not overlap(first, copy), (first, copy)
    shot(page, "canvas-5-duplicate")


def test_layers_reorder_hide_and_lock(page):
    load(page, ("obj", [100, 100, 300, 300]), ("text", [100, 400, 300, 600]), ("obj", [500, 100, 800, 800]))
    rows = page.locator(f"{CANVAS} .lc-layer")
    assert rows.count() == 3
    first, last = rows.nth(0).bounding_box(), rows.nth(2).bounding_box()
    drag(page, (first["x"] + 60, first["y"] + first["height"] / 2),
         (last["x"] + 60, last["y"] + last["height"] - 2))  # the first row dropped below the last
    els = wait_json(page, "els[2].desc === 'element 1'")
    assert [e["desc"] for e in els] == ["element 2", "element 3", "element 1"]
    shot(page, "canvas-6-reordered")

    rows.nth(1).locator("[data-layer=hide]").click()  # element 3 (the big one) hidden on the canvas only
    assert page.locator(f"{CANVAS} .lc-box").count() == 2
    assert page.locator(f"{CANVAS} .lc-box[data-index='1']").count() == 0
    assert len(elements(page)) == 3  # still in the caption

    rows.nth(0).locator("[data-layer=lock]").click()  # element 2 (text) locked: a drag on it draws instead
    s = Stage(page)
    before = elements(page)[0]["bbox"]
    drag(page, s.at(450, 150), s.at(550, 250))
    els = wait_json(page, "els.length === 4")
    assert els[0]["bbox"] == before == [100, 400, 300, 600]
    page.locator(f"{CANVAS} .lc-layer").nth(0).click()  # a locked element is still selectable ...
    page.wait_for_selector(f"{CANVAS} .lc-layer.lc-selected[data-index='0']")
    page.locator(f"{CANVAS} .lc-stage").focus()
    page.keyboard.press("ArrowRight")  # ... but arrows do not move it
    page.wait_for_timeout(300)
    assert elements(page)[0]["bbox"] == before
    assert page.locator(f"{CANVAS} .lc-box.lc-selected .lc-handle").count() == 0
    shot(page, "canvas-7-hidden-locked")


def test_multi_select_align_left_distribute_move_and_delete(page):
    load(page, ("obj", [100, 120, 200, 300]), ("text", [300, 260, 400, 500]), ("obj", [600, 200, 700, 420]))
    boxes = page.locator(f"{CANVAS} .lc-box")
    boxes.nth(0).click(position={"x": 30, "y": 30})
    boxes.nth(1).click(position={"x": 30, "y": 30}, modifiers=["Shift"])
    boxes.nth(2).click(position={"x": 30, "y": 30}, modifiers=["Control"])
    page.wait_for_function(f"() => document.querySelectorAll('{CANVAS} .lc-box.lc-picked').length === 3")
    page.locator(f"{CANVAS} [data-align=left]").click()
    els = wait_json(page, "els.every(e => e.bbox[1] === 120)")
    assert [e["bbox"] for e in els] == [[100, 120, 200, 300], [300, 120, 400, 360], [600, 120, 700, 340]]
    shot(page, "canvas-8-aligned-left")

    page.locator(f"{CANVAS} [data-distribute=v]").click()  # tops 100 and 600 stay; gaps (700-100-300)/2 = 150
    els = wait_json(page, "els[1].bbox[0] === 350")
    assert [e["bbox"][0] for e in els] == [100, 350, 600]

    page.keyboard.press("Escape")
    s = Stage(page)
    page.keyboard.down("Control")  # a marquee over the first two boxes
    drag(page, s.at(50, 50), s.at(400, 470))
    page.keyboard.up("Control")
    page.wait_for_function(f"() => document.querySelectorAll('{CANVAS} .lc-box.lc-picked').length === 2")
    drag(page, s.at(200, 150), s.at(300, 150))  # moving one picked box moves both, as one edit
    els = wait_json(page, "els[0].bbox[1] === 220")
    assert [e["bbox"][1] for e in els] == [220, 220, 120]
    shot(page, "canvas-9-group-moved")
    page.keyboard.press("Delete")  # both picked boxes, as one edit
    assert [e["desc"] for e in wait_json(page, "els.length === 1")] == ["element 3"]
    page.keyboard.press("Control+z")
    assert len(wait_json(page, "els.length === 3")) == 3
    assert page.js_errors == []


def test_a_gesture_is_applied_at_once_and_sent_once(page):
    load(page, ("obj", [100, 100, 400, 400]), ("obj", [500, 500, 800, 800]))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}") if "heartbeat" not in r.url else None)
    s = Stage(page)
    page.mouse.move(*s.at(250, 250))
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(*s.at(250 + 20 * k, 250 + 10 * k))
    assert requests == []  # nothing is sent while dragging
    page.mouse.up()
    # applied locally at once: the box is at its new place before any answer can have arrived
    assert page.locator(f"{CANVAS} .lc-box").first.evaluate("b => [b.style.left, b.style.top]") == ["30%", "20%"]
    wait_json(page, "els[0].bbox[1] === 300")
    page.wait_for_timeout(1500)  # anything late would show up here
    joins = [r for r in requests if "/queue/join" in r]
    assert len(joins) == 1, requests
    assert page.locator(f"{CANVAS} .lc-box").first.evaluate("b => [b.style.left, b.style.top]") == ["30%", "20%"]


def test_stage_height_is_the_pages_choice(browser):
    """A page that lays the canvas out beside other things sets the stage's height (checked: a CSS length)."""
    import gradio as gr

    from ideogram_app.ui.canvas import LayoutCanvas

    with pytest.raises(ValueError, match="stage_height must be a CSS length"):
        LayoutCanvas(stage_height="1px); background: url(x)")
    with gr.Blocks() as demo:
        LayoutCanvas(elem_id="short-canvas", stage_height="300px")
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        page = context.new_page()
        page.goto(demo.local_url)
        stage = page.locator("#short-canvas .lc-stage")
        stage.wait_for()
        page.wait_for_function("() => document.querySelector('#short-canvas .lc-stage').style.width !== ''")
        assert stage.bounding_box()["height"] == pytest.approx(300, abs=1)
    finally:
        context.close()
        demo.close()


def test_a_slow_server_does_not_move_the_box_back(page):
    """The server's answer held back for 2.5 s (longer than the canvas waits before it lets the next
    edit go): the box stays where the user put it, and the answer confirms it."""
    load(page, ("obj", [100, 100, 400, 400]))
    held = []
    page.route("**/queue/join*", lambda route: held.append(route))
    s = Stage(page)
    drag(page, s.at(250, 250), s.at(450, 350))
    page.wait_for_timeout(2500)
    assert len(held) == 1 and elements(page)[0]["bbox"] == [100, 100, 400, 400]  # the server has not seen it
    assert page.locator(f"{CANVAS} .lc-box").first.evaluate("b => [b.style.left, b.style.top]") == ["30%", "20%"]
    held[0].continue_()
    assert wait_json(page, "els[0].bbox[1] === 300")[0]["bbox"] == [200, 300, 500, 600]
    assert page.locator(f"{CANVAS} .lc-box").first.evaluate("b => [b.style.left, b.style.top]") == ["30%", "20%"]
