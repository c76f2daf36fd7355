"""The explorer's page: Gradio's handlers over an Explorer (a UserError
shown as a message), then one function per section of the page, each wiring
its own events, and serve() with everything that could reach the web off.

    demo = serve(build_app(Explorer.load(params)), "127.0.0.1", 7860, block=False)
"""
from __future__ import annotations

import functools
import inspect
import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from gradio import processing_utils
from gradio import utils as gradio_utils

import utils
from editing.directions import parse_edit
from editing.latents import ARITH_EXAMPLE, CONCEPT_EXAMPLE
from editing.photo_session import Expiring
from explorer.core import MAX_STEPS, PHOTO_TERM, Explorer
from explorer.inputs import (EDIT_MAX, MAX_FACES, MAX_TEXT, PAGE, SEED_MAX, WALK_SPAN, check_seed, check_text,
                             page_seeds, parse_seeds, seed_range)
from explorer.memory import trim_memory
from preprocessing.photo import MAX_BYTES as MAX_PHOTO_BYTES

SESSIONS = 100  # visitors (each API call is one) whose page state the server keeps; older ones are dropped
PHOTO_FILE_SECONDS = 60  # the PNGs sent for a photo (aligned face, projection, its edits) are deleted after this
MAX_PHOTO_MB = MAX_PHOTO_BYTES // 2**20  # an upload's size limit (preprocessing.photo's), also Gradio's upload cap
WALK_LABEL = "Walk: a continuous seed"

CSS = """
#faces .grid-wrap, #arithmetic .grid-wrap { height: auto !important; min-height: 0 !important; }
#face img, #strip img, #gif img { width: 100%; height: 100%; object-fit: contain; }
"""
PRIVATE = {"api_visibility": "private"}  # an event only the page uses: not an API endpoint
LIVE = {"show_progress": "hidden", "trigger_mode": "always_last", **PRIVATE}  # follows a slider as it moves


def answer(fn):
    """fn, with a UserError turned into a gr.Error: shown in the page and sent through the API."""
    if inspect.isgeneratorfunction(fn):  # a handler that yields its answers as they come
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except utils.UserError as err:
                raise gr.Error(str(err), print_exception=False) from None
        return stream

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except utils.UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
    return wrapped


class Handlers:
    """What the page's events call: the explorer's answers in the shapes the
    components take (a gallery's (face, caption) pairs, a file to download, a
    slider's new range), a UserError shown as a message. Gradio shows the
    docstrings of the API's six (faces, edit, interpolate, arithmetic, project, edit_photo)."""

    def __init__(self, explorer: Explorer, photo_file_seconds: float = PHOTO_FILE_SECONDS):
        self.explorer = explorer
        self.expiring = Expiring(photo_file_seconds)  # the PNGs sent for a photo, deleted after a minute

    # the faces -------------------------------------------------------------------
    @answer
    def faces(self, seeds: str):
        """Faces by seed: a seed list such as "0-15" or "3,7,42" (at most 64 faces) -> the faces (captioned
        "seed N") and their grid PNG."""
        items, grid, seeds_list = self.explorer.faces(seeds)
        return items, self.explorer.grid_png(grid, seeds_list)

    def page(self, seeds: str, step: int):
        """The next (step +1) or previous (-1) page -> (its seed list, its faces, their grid PNG)."""
        text = page_seeds(seeds, step)
        return (text, *self.faces(text))

    @answer
    def previous_page(self, seeds: str):
        """The page of faces before this one."""
        return self.page(seeds, -1)

    @answer
    def next_page(self, seeds: str):
        """The page of faces after this one."""
        return self.page(seeds, +1)

    @answer
    def random_page(self, seeds: str):
        """As many faces as now (a page when none), from a random seed under 100,000."""
        count = len(parse_seeds(seeds)) if seeds and seeds.strip() else PAGE
        text = seed_range(int(np.random.default_rng().integers(0, 100_000)), count)
        return (text, *self.faces(text))

    # the picked face -------------------------------------------------------------
    @answer
    def edit(self, seed: float, edits: str):
        """The face at a continuous seed (3.25: a quarter of the way from seed 3 to seed 4) moved along named
        directions, e.g. "Smiling=+2,Eyeglasses=+1.5" (empty: no edit)."""
        edits = check_text(edits, "edit").strip()
        return self.explorer.face(seed, parse_edit(edits) if edits else [])

    @answer
    def show(self, seed: float, photo: str, *strengths: float):
        """The face at the walk slider's seed (the picked photo's, when one is), moved by the edit sliders."""
        face = self.explorer.face(seed, list(zip(self.explorer.names, strengths)), photo)
        return self.photo_png(face) if photo else face

    @answer
    def pick(self, seeds: str, evt: gr.SelectData, *strengths: float):
        """A face clicked in the gallery -> (its seed, the walk slider around it, it with the edits)."""
        caption = str((evt.value if isinstance(evt.value, dict) else {}).get("caption") or "")
        seed = int(caption.split()[-1]) if caption.startswith("seed ") else parse_seeds(seeds)[evt.index]
        low, high = max(0, seed - WALK_SPAN), min(SEED_MAX, seed + WALK_SPAN)
        return (seed, gr.Slider(minimum=low, maximum=high, value=seed, interactive=True, label=WALK_LABEL), "",
                self.explorer.face(seed, list(zip(self.explorer.names, strengths))))

    @answer
    def reset(self, seed: float, photo: str):
        """Every edit slider back to 0, and the picked face without edits."""
        return [0.0] * len(self.explorer.names) + [self.show(seed, photo)]

    @answer
    def picked_end(self, picked, photo: str):
        """The picked face as a walk's from or to end -> (the seed field, its label, the photo id or "")."""
        if photo:
            return gr.Number(label="Your photo (type a seed instead to walk from it)"), photo
        return gr.Number(int(check_seed(picked, "picked seed")), label="Seed"), ""

    def typed_end(self, _value):
        """A seed typed in a walk's end: that end is the seed, not the photo."""
        return gr.Number(label="Seed"), ""

    # your photo ----------------------------------------------------------------------
    @answer
    def project(self, photo: bytes | None, progress=gr.Progress(track_tqdm=True)):
        """Your photo (JPEG, PNG or WebP, at most 10 MB and 25 megapixels; with gradio_client:
        handle_file(path)) aligned as CelebA was and projected into the generator, which is then tuned around it
        (a few seconds) -> the aligned face, the projection, and its id for edit_photo (the server keeps the last
        few projections in memory). The upload is deleted from the server's disk as soon as it is read."""
        if photo is None:
            raise utils.UserError("no photo: upload a JPEG, PNG or WebP photo with a face")
        data = bytes(photo)
        forget_upload(data)
        for target, projection, photo_id in self.explorer.project(data, progress="your photo"):
            yield (self.photo_png(target), None if projection is None else self.photo_png(projection),
                   photo_id or "")
        trim_memory()  # the projection's autograd buffers, freed, back to the system

    @answer
    def edit_photo(self, photo: str, edits: str):
        """A projected photo (the id project answered with) moved along named directions, e.g. "Smiling=+2"
        (empty: the projection itself)."""
        edits = check_text(edits, "edit").strip()
        return self.photo_png(self.explorer.face(0, parse_edit(edits) if edits else [], str(photo or "")))

    @answer
    def pick_photo(self, photo: str, *strengths: float):
        """The projected photo as the picked face -> (its id as picked and as the last photo, the walk slider
        at rest, it with the edits, the upload field cleared)."""
        walk = gr.Slider(interactive=False, label="Walk: pick a face in the gallery to walk the seeds")
        return photo, photo, walk, self.show(0, photo, *strengths), None

    def photo_file(self, path: str) -> str:
        """A file made for a photo (a walk's GIF) -> its copy in Gradio's cache, deleted PHOTO_FILE_SECONDS
        later; the explorer's own copy at once."""
        cached = self.expiring.keep(lambda: processing_utils.save_file_to_cache(
            path, cache_dir=gradio_utils.get_upload_folder()))
        shutil.rmtree(Path(path).parent, ignore_errors=True)
        return cached

    def photo_png(self, image: np.ndarray) -> str:
        """A face of the visitor's photo -> the PNG Gradio sends, in its cache, deleted PHOTO_FILE_SECONDS later."""
        return self.expiring.keep(lambda: processing_utils.save_img_array_to_cache(
            image, cache_dir=gradio_utils.get_upload_folder(), format="png"))

    # the walk and the arithmetic ---------------------------------------------------
    @answer
    def interpolate(self, seed_a: float, seed_b: float, steps: int, photo_a: str = "", photo_b: str = ""):
        """The spherical walk from seed_a's face to seed_b's in `steps` frames (2 to 32) -> the frames as one PNG
        row and as a looping GIF."""
        strip, frames = self.explorer.interpolate(seed_a, seed_b, steps, photo_a, photo_b)
        if photo_a or photo_b:
            return self.photo_png(strip), self.photo_file(self.explorer.walk_gif(frames, seed_a, seed_b))
        return strip, self.explorer.walk_gif(frames, seed_a, seed_b)

    @answer
    def arithmetic(self, expression: str, photo: str = ""):
        """Face arithmetic (DCGAN paper, fig. 7): seed lists or attribute conditions joined by + and -, e.g.
        "3,17,42 - 5,8,9 + 11,23,31" or "Smiling,~Male - ~Smiling,~Male + ~Smiling,Male" -> each term's mean
        face and the result."""
        items = self.explorer.arithmetic(expression, photo)
        return [(self.photo_png(image), caption) for image, caption in items] if photo else items

    @answer
    def add_term(self, expression: str, picked, photo: str, how: str):
        """The expression with the picked seed (or "photo") added: to its last term ("this"), as a new "+" or
        "-" term, or alone ("start")."""
        seed = PHOTO_TERM if photo else int(check_seed(picked, "picked seed"))
        text = check_text(expression, "expression").strip()
        if not text or how == "start":
            return str(seed)
        if how == "this" and photo:  # "photo" is a term of its own
            return f"{text} + {seed}"
        if how == "this":
            return f"{text},{seed}"
        return f"{text} {how} {seed}"


def forget_upload(data: bytes) -> None:
    """Delete the file Gradio wrote for an upload of ``data`` before any
    handler ran: its folder in the upload folder is named by the hash Gradio
    computes of the bytes (processing_utils.hash_bytes, seeded per install)."""
    shutil.rmtree(Path(gradio_utils.get_upload_folder()) / processing_utils.hash_bytes(data), ignore_errors=True)


@dataclass
class PickedFace:
    """The picked face's components, which the sections after its own read
    and set. A section that makes a face the picked one (a click in the
    gallery) sets ``picked``, ``walk`` and ``face``; one that uses it reads
    ``picked``; ``sliders`` are the edit strengths applied to the face."""
    picked: gr.Number  # the picked seed
    walk: gr.Slider  # a continuous seed near it (picked +- WALK_SPAN): the face shown is this seed's
    face: gr.Image  # the face at ``walk`` (or the picked photo's), moved by ``sliders``
    sliders: list[gr.Slider]  # one strength per direction, in explorer.names order; none without directions
    photo: gr.State  # the picked photo's id, "" when the picked face is a seed's
    last_photo: gr.State  # the visitor's last projected photo's id: the arithmetic's "photo"


def build_app(explorer: Explorer, handlers: Handlers | None = None) -> gr.Blocks:
    """The gr.Blocks page of ``explorer`` (its events call ``handlers``, made
    when None), one section after another, each wiring its own events: every
    action an ``api_name``d event."""
    handlers = handlers or Handlers(explorer)
    with gr.Blocks(title="DCGAN face explorer", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"## DCGAN face explorer\n{explorer.summary()}. Click a face to pick it; walk, edit and add "
                    f"it below. Every action is also an API endpoint (see the API link at the foot of the page).")
        seeds, gallery = faces_section(demo, handlers)
        picked = picked_face_section(demo, handlers, seeds, gallery)
        photo_section(handlers, picked)
        walk_section(handlers, picked)
        arithmetic_section(handlers, picked)
        edit_endpoint(handlers, picked)
    return demo


def faces_section(demo: gr.Blocks, handlers: Handlers) -> tuple[gr.Textbox, gr.Gallery]:
    """A page of faces by seed (Show, Previous, Next, Random) and their grid
    PNG: the ``faces`` endpoint, also run when the page opens. -> (the seed
    list, the gallery a face is picked in)."""
    with gr.Row():
        seeds = gr.Textbox(seed_range(0, PAGE), label="Seeds (e.g. 0-15 or 3,7,42; at most "
                           f"{MAX_FACES} faces)", max_length=MAX_TEXT, scale=4, elem_id="seeds")
        show_button = gr.Button("Show", variant="primary", scale=1, elem_id="show")
        prev_button = gr.Button("◀ Previous", scale=1, elem_id="previous")
        next_button = gr.Button("Next ▶", scale=1, elem_id="next")
        random_button = gr.Button("Random", scale=1, elem_id="random")
    gallery = gr.Gallery(label="Faces (click one to pick it)", columns=8, format="png", allow_preview=False,
                         object_fit="contain", elem_id="faces", buttons=["download", "download_all"])
    grid_file = gr.DownloadButton("Download the grid (PNG)", elem_id="grid-download", size="sm")

    gr.on([show_button.click, seeds.submit, demo.load], handlers.faces, seeds, [gallery, grid_file],
          api_name="faces")
    for button, handler in ((prev_button, handlers.previous_page), (next_button, handlers.next_page),
                            (random_button, handlers.random_page)):
        button.click(handler, seeds, [seeds, gallery, grid_file], **PRIVATE)
    return seeds, gallery


def picked_face_section(demo: gr.Blocks, handlers: Handlers, seeds: gr.Textbox, gallery: gr.Gallery) -> PickedFace:
    """The face picked in ``gallery``, walked along a continuous seed and
    moved by an edit slider per direction (the API's edit is edit_endpoint)."""
    explorer = handlers.explorer
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            face = gr.Image(label="The picked face, walked and edited", format="png", height=256,
                            interactive=False, buttons=["download"], elem_id="face")
            picked = gr.Number(0, label="Picked seed", precision=0, minimum=0, maximum=SEED_MAX,
                               interactive=False, elem_id="picked")
            walk = gr.Slider(0, 2 * WALK_SPAN, value=0, step=0.01, label=WALK_LABEL,
                             info="between two seeds, a spherical walk between their latents", elem_id="walk")
        with gr.Column(scale=2):
            gr.Markdown("### Edit: move the face along a named direction")
            sliders, reset = edit_sliders(explorer)

    photo, last_photo = gr.State(""), gr.State("")
    demo.load(handlers.show, [walk, photo, *sliders], face, **PRIVATE)
    gallery.select(handlers.pick, [seeds, *sliders], [picked, walk, photo, face], **PRIVATE)
    gr.on([walk.input, *(s.input for s in sliders)], handlers.show, [walk, photo, *sliders], face, **LIVE)
    if reset is not None:
        reset.click(handlers.reset, [walk, photo], [*sliders, face], **PRIVATE)
    return PickedFace(picked, walk, face, sliders, photo, last_photo)


def edit_sliders(explorer: Explorer) -> tuple[list[gr.Slider], gr.Button | None]:
    """A slider per direction in two columns and a reset button -> (sliders,
    reset); without directions, the note that says how to make them."""
    if not explorer.names:
        gr.Markdown(explorer.directions_note, elem_id="no-directions")
        return [], None
    sliders, half = [], (len(explorer.names) + 1) // 2
    with gr.Row():
        for names in (explorer.names[:half], explorer.names[half:]):
            with gr.Column(min_width=200):
                sliders += [gr.Slider(-EDIT_MAX, EDIT_MAX, value=0, step=0.1, label=name, elem_id=f"edit-{name}")
                            for name in names]
    return sliders, gr.Button("Reset the edits", size="sm")


def photo_section(handlers: Handlers, shared: PickedFace) -> None:
    """Your photo: uploaded, aligned as CelebA was, projected (progress as it
    runs), and made the picked face, so the sliders, the walk and the
    arithmetic ("photo") work on it: the ``project`` endpoint. The upload is
    read as bytes and its file deleted at once (forget_upload)."""
    settings = handlers.explorer.photo_settings
    gr.Markdown(f"### Your photo\nA JPEG, PNG or WebP photo with a face (at most {MAX_PHOTO_MB} MB): aligned as "
                f"CelebA's faces were, then projected into the generator ({settings.steps} steps on the latent, "
                f"{settings.tune_steps} tuning the generator around it; a few seconds). At "
                f"{handlers.explorer.config['size']} px the projection is a close relative, not a copy. It "
                f"becomes the picked face; in the arithmetic it is the term `{PHOTO_TERM}`. The photo is kept "
                f"in this server's memory only, for this page, while it is among the last "
                f"{handlers.explorer.photos.capacity} projections.")
    with gr.Row():
        upload = gr.File(label="Your photo", file_types=[".jpg", ".jpeg", ".png", ".webp"], type="binary",
                         height=160, elem_id="photo-upload")
        aligned = gr.Image(label="Aligned as CelebA", format="png", interactive=False, height=160,
                           elem_id="photo-aligned")
        projection = gr.Image(label="Its projection", format="png", interactive=False, height=160,
                              elem_id="photo-projection")
        photo_id = gr.Textbox(label="Photo id (for the API's edit_photo)", interactive=False,
                              elem_id="photo-id")

    upload.upload(handlers.project, upload, [aligned, projection, photo_id], api_name="project").success(
        handlers.pick_photo, [photo_id, *shared.sliders], [shared.photo, shared.last_photo, shared.walk,
                                                           shared.face, upload], **PRIVATE)


def walk_section(handlers: Handlers, shared: PickedFace) -> None:
    """The spherical walk from one seed's face to another's (the picked seed
    at either end), as a PNG row and a looping GIF: the ``interpolate`` endpoint."""
    gr.Markdown("### Walk from one face to another")
    with gr.Row():
        seed_a = gr.Number(0, label="From seed", minimum=0, maximum=SEED_MAX, elem_id="seed-a")
        to_a = gr.Button("Picked → from", size="sm")
        seed_b = gr.Number(1, label="To seed", minimum=0, maximum=SEED_MAX, elem_id="seed-b")
        to_b = gr.Button("Picked → to", size="sm")
        steps = gr.Slider(2, MAX_STEPS, value=8, step=1, label="Frames")
        walk_button = gr.Button("Walk", variant="primary", elem_id="walk-button")
    with gr.Row():
        strip = gr.Image(label="The walk (PNG)", format="png", interactive=False, buttons=["download"],
                         height=160, scale=3, elem_id="strip")
        gif = gr.Image(label="The walk (GIF)", type="filepath", interactive=False, buttons=["download"],
                       height=160, scale=1, elem_id="gif")

    from_photo, to_photo = gr.State(""), gr.State("")  # an end that is the picked photo: its id
    walk_button.click(handlers.interpolate, [seed_a, seed_b, steps, from_photo, to_photo], [strip, gif],
                      api_name="interpolate")
    for button, seed, end in ((to_a, seed_a, from_photo), (to_b, seed_b, to_photo)):
        button.click(handlers.picked_end, [shared.picked, shared.photo], [seed, end], **PRIVATE)
        seed.input(handlers.typed_end, seed, [seed, end], **PRIVATE)


def arithmetic_section(handlers: Handlers, shared: PickedFace) -> None:
    """Face arithmetic, A - B + C, by seed lists or attribute conditions, the
    picked seed added to it by button: the ``arithmetic`` endpoint."""
    explorer = handlers.explorer
    attributes = ", ".join(explorer.concepts)
    gr.Markdown("### Add faces: A - B + C\nEach term is the mean of its faces' latents (a seed list)"
                + (f" or of the sampled faces most surely showing a condition (attributes {attributes}; "
                   f"~ = without)" if attributes else f". {explorer.pool_note}"))
    with gr.Row():
        expression = gr.Textbox(CONCEPT_EXAMPLE if explorer.concepts else ARITH_EXAMPLE, label="Expression",
                                max_length=MAX_TEXT, scale=4, elem_id="expression")
        arith_button = gr.Button("Add", variant="primary", scale=1, elem_id="add")
    with gr.Row():  # how each button adds the picked seed (Handlers.add_term)
        adders = {how: gr.Button(label, size="sm") for how, label in (
            ("this", "Picked → this term"), ("+", "Picked → new + term"), ("-", "Picked → new - term"),
            ("start", "Start over with picked"))}
    arith = gr.Gallery(label="Each term's mean face, then the result", columns=8, format="png", fit_columns=False,
                       allow_preview=False, object_fit="contain", buttons=["download"], elem_id="arithmetic")

    arith_button.click(handlers.arithmetic, [expression, shared.last_photo], arith, api_name="arithmetic")
    expression.submit(handlers.arithmetic, [expression, shared.last_photo], arith, **PRIVATE)
    for how, button in adders.items():
        button.click(functools.partial(handlers.add_term, how=how), [expression, shared.picked, shared.photo],
                     expression, **PRIVATE)


def edit_endpoint(handlers: Handlers, shared: PickedFace) -> None:
    """The API's ``edit``: any seed (the walk slider covers only the picked
    seed's neighbourhood) and the edits as text, in hidden inputs, so last on
    the page; it answers into the picked face."""
    edit_seed, edit_text = gr.Number(visible=False), gr.Textbox(visible=False)
    edit_trigger = gr.Button(visible=False)
    edit_trigger.click(handlers.edit, [edit_seed, edit_text], shared.face, api_name="edit")
    photo_id, photo_edit = gr.Textbox(visible=False), gr.Textbox(visible=False)
    photo_trigger = gr.Button(visible=False)
    photo_trigger.click(handlers.edit_photo, [photo_id, photo_edit], shared.face, api_name="edit_photo")


def serve(demo, host: str = "127.0.0.1", port: int = 7860, queue_size: int = 20, concurrency: int = 1,
          block: bool = True):
    """Queue (at most ``queue_size`` waiting, ``concurrency`` computed at
    once) and serve ``demo`` with everything that could reach the web off;
    ``block``: until Ctrl-C. -> the running demo."""
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    try:
        demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=True, ssr_mode=False,
                    mcp_server=False, pwa=False, show_error=False, max_file_size=f"{MAX_PHOTO_BYTES}b",
                    footer_links=["api"],
                    enable_monitoring=False, max_threads=8 + concurrency, state_session_capacity=SESSIONS,
                    theme=theme, css=CSS,
                    prevent_thread_lock=not block)
    except OSError as err:
        raise utils.UserError(f"cannot serve on {host}:{port} ({err}); pass another --port") from None
    return demo

