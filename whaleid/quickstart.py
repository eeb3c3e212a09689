"""``whaleid quickstart``: from nothing to a serving bundle on one machine.

1. data: the synthetic fluke set (default) or your photos (``--images DIR --labels CSV``);
2. the starter model (``starter/``, an EfficientNet-Lite0 + ArcFace embedding trained on real flukes,
   with a fluke detector; see its MODEL_CARD.md): no training. With ``--train``: fine-tune
   ``configs/cpu-lite0.yaml`` from the starter weights on the photos (minutes for the synthetic set,
   hours for a real catalogue);
3. split the photos by whale into a gallery and validation photos (with ``--train``: export the
   trained bundle, ONNX verified against torch, give it the starter's detector, and use the run's split);
4. build the gallery from the gallery photos (with SIFT features), choose the new_whale thresholds of
   the ``embedding`` and ``fused`` scoring modes on the validation photos as the service will see them
   (no boxes: the bundle's TTA boxes, as for an upload), make the better of the two the bundle's
   default, then enrol the validation photos too;
5. serve on 127.0.0.1:8000 and print ``curl`` examples.

A bundle that already exists is served as it is (delete the folder to rebuild it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from core.errors import ConfigError
from core.manifest import MANIFEST_NAME, load_manifest

DEFAULT_HOME = Path("artifacts") / "quickstart"
# validation photos used to calibrate: extracting and matching each one's local features is the slow
# part (about 0.3 s a photo against 2,000 real gallery photos on one busy core)
MAX_CALIBRATION_QUERIES = 150
# --train: configs/cpu-lite0.yaml fine-tuned from the starter model on all cores, for a short schedule
TRAIN_CONFIG = "cpu-lite0.yaml"
TRAIN_OVERRIDES = ["threads=0", "stages.0.epochs=2", "head.margin_warmup_epochs=1"]
# what the steps took for the synthetic set here (2 cores shared with other jobs, load average 4-5),
# printed before each step: training 86 s (2 epochs, evaluation included); gallery and calibration 24-63 s
STEP_SECONDS_TRAIN = "about 1.5 minutes for the synthetic set, measured on 2 busy cores"
STEP_SECONDS_GALLERY = "1 to 2 minutes for the synthetic set on 2 cores, the more the busier they are"


def calibration_subset(queries: Path, out: Path, limit: int = MAX_CALIBRATION_QUERIES, seed: int = 0) -> Path:
    """At most ``limit`` rows of a labels CSV (a seeded random choice, file order kept) in ``out``."""
    import random

    header, *rows = queries.read_text().splitlines()
    if len(rows) > limit:
        keep = set(random.Random(seed).sample(range(len(rows)), limit))
        rows = [r for i, r in enumerate(rows) if i in keep]
    out.write_text("\n".join([header, *rows]) + "\n")
    return out


def config_path(name: str = TRAIN_CONFIG) -> Path:
    """``configs/NAME`` of the checkout, or the copy shipped inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs" / name, here / "configs" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"configs/{name} not found next to the whaleid package")


def _step(n: int, text: str) -> float:
    typer.secho(f"[{n}/5] {text}", fg=typer.colors.CYAN, bold=True)
    return time.perf_counter()


def _done(t: float, text: str = "") -> None:
    typer.echo(f"      {text}{'; ' if text else ''}took {time.perf_counter() - t:.0f} s")


def _fine_tune(
    home: Path,
    images: Path,
    labels: Path,
    boxes: Path | None,
    overrides: list[str],
    starter: Path | None,
    synthetic: bool,
) -> Path:
    """Steps 2 and 3 of ``--train``: fine-tune ``configs/cpu-lite0.yaml`` from the starter model (from
    the ImageNet weights of ``pip:efficientnet-lite0`` when no starter is installed), then export."""
    from training.config import load_config
    from training.engine import train
    from training.export import export_bundle
    from whaleid.starter import copy_detector

    expect = STEP_SECONDS_TRAIN if synthetic else "minutes to hours: about 5 photos a second on 2 cores"
    t = _step(2, f"fine-tune {config_path().name} on your photos (progress below; {expect})")
    mine = [f"run_dir={home / 'run'}", f"data.images={images}", f"data.labels={labels}", *TRAIN_OVERRIDES]
    if boxes:
        mine.append(f"data.boxes={boxes}")
    if starter is not None:
        mine.append(f"model.init_from={starter}")
    cfg = load_config(config_path(), [*mine, *overrides])
    resume = (home / "run" / "checkpoints" / "last.pt").exists() and not (home / "run" / "eval.json").exists()
    run = train(cfg, resume=resume)
    ev = json.loads((run / "eval.json").read_text())
    _done(t, f"validation MAP@5 {ev['map5']:.3f} on the photos' boxes")
    t = _step(3, "export the bundle (ONNX, verified against torch)")
    rep = export_bundle(run, home / "bundle", fine_tunable=True)
    kept = starter is not None and copy_detector(starter, home / "bundle")  # the box finder needs no retraining
    _done(
        t,
        f"max |onnxruntime - torch| = {max(rep.max_abs_diff.values()):.1e}"
        + ("; the starter's fluke detector kept" if kept else ""),
    )
    return run


def build(
    home: Path,
    images: Path | None,
    labels: Path | None,
    boxes: Path | None,
    overrides: list[str] | None = None,
    train: bool = False,
    starter: Path | None = None,
) -> Path:
    """Steps 1 to 4; returns the bundle folder.

    Args:
        home: working folder (``synthetic/``, ``split/``, ``bundle/``, and ``run/`` with ``train``).
        images, labels, boxes: your photos; ``None``: the synthetic set.
        overrides: ``key=value`` training-config overrides (``train`` only), applied after the quickstart's.
        train: fine-tune on the photos first (``configs/cpu-lite0.yaml``); else serve the starter model.
        starter: the starter bundle (default: the one shipped, :func:`whaleid.starter.starter_bundle`;
            without one, the quickstart trains, from the ImageNet weights of ``pip:efficientnet-lite0``).

    Raises:
        ConfigError: bad photos or labels; ``train`` without the starter nor the ``pretrained`` extra.
        typer.BadParameter: ``overrides`` without ``train``.
    """
    from training.synthetic import make_synthetic_dataset
    from whaleid.starter import copy_starter, split_photos, starter_bundle
    from whaleid.workflows import build_gallery, calibrate_modes, split_csv

    if overrides and not train:
        raise typer.BadParameter("--set changes the training config: add --train")
    if starter is None:
        try:
            starter = starter_bundle()
        except ConfigError as exc:  # a checkout without starter/: train (from the ImageNet weights)
            if not train:
                typer.secho(f"{exc.detail}; training one instead (as --train)", fg=typer.colors.YELLOW)
            train, starter = True, None
    bundle = home / "bundle"
    split = home / "split"
    synthetic = images is None
    t = _step(1, "data")
    if images is None:
        data = home / "synthetic"
        if not (data / "train.csv").exists():
            make_synthetic_dataset(data)
        images, labels, boxes = data / "images", data / "train.csv", data / "boxes.csv"
        typer.echo(f"      synthetic set in {data} ({sum(1 for _ in images.iterdir())} photos)")
    else:
        typer.echo(f"      photos {images}, labels {labels}" + (f", boxes {boxes}" if boxes else ""))
    if train:
        run = _fine_tune(home, images, labels, boxes, list(overrides or []), starter, synthetic)
        split_csv(run, split)
    else:
        t = _step(2, f"the starter model {starter} (a fluke embedding trained on real photos: no training here)")
        manifest = copy_starter(starter, bundle)
        _done(t, f"{manifest.model.architecture}, {manifest.model.embedding_dim}-d, {manifest.model_version}")
        t = _step(3, "split the photos by whale: a gallery, and validation photos to calibrate on")
        summary = split_photos(images, labels, boxes, split)
        split_csv(split, split)
        held_out = summary["queries_held_out_whales"]
        _done(
            t,
            f"{summary['train_photos']} gallery photos of {summary['train_identities']} whales; "
            f"{summary['queries']} validation photos ({summary['queries_known']} photos of those whales, "
            f"{summary['queries_new_whale']} as new whales: {summary['queries_held_out_photos']} photos of {held_out} "
            f"{'whale' if held_out == 1 else 'whales'} kept out of the gallery and {summary['queries_unnamed']} "
            f"unnamed (new_whale) ones); {summary['new_whale_unused']} other unnamed photos not used",
        )
    expect = STEP_SECONDS_GALLERY if synthetic else _own_estimate(labels)
    t = _step(
        4,
        f"build the gallery, choose the scoring mode and the new_whale threshold as the service sees photos ({expect})",
    )
    build_gallery(bundle, images, split / "gallery.csv", split / "gallery_boxes.csv", reset=True, local_features=True)
    # choose the threshold on the validation photos without their boxes (the bundle's TTA boxes,
    # exactly as /identify does): an upload has no box
    queries = calibration_subset(split / "queries.csv", split / "calibration.csv")
    # both modes on one pass over the photos; fused at its defaults: the embedding's shortlist joined by
    # the whales LNBNN finds (index.lnbnn)
    calibrated = calibrate_modes(bundle, images, queries, mode_names=("embedding", "fused"), progress=False)
    emb, fused = calibrated["embedding"], calibrated["fused"]
    n_val = emb["queries"]
    # fused uses both cues: it stays the default unless the embedding alone wins by more than one photo
    best = "embedding" if emb["map5"] > fused["map5"] + 1.0 / max(n_val, 1) else "fused"
    manifest = load_manifest(bundle)
    manifest.model_copy(update={"scoring": best}).save(bundle)
    n_all = max(0, len((split / "queries.csv").read_text().splitlines()) - 1)
    subset = f"{n_val} photos" if n_val >= n_all else f"{n_val} of the {n_all} validation photos, drawn at random"
    typer.echo(
        f"      validation as served ({subset}): MAP@5 {emb['map5']:.3f} with the embedding alone "
        f"(new_whale threshold {emb['saved_threshold']:.3f}), {fused['map5']:.3f} fused with SIFT + RANSAC "
        f"(threshold {fused['saved_threshold']:.3f}); default scoring: {best} (fused unless the embedding's MAP@5 is "
        f"higher by more than one photo's worth, 1/{max(n_val, 1)} = {1 / max(n_val, 1):.3f}; `whaleid compare-modes` "
        "on more labelled photos decides better)"
    )
    before = len(load_gallery_whales(bundle))
    typer.echo(
        "      enrolling the validation photos of named whales: the bar counts every photo the labels name, "
        "those already in the gallery pass quickly"
    )
    stats = build_gallery(bundle, images, labels, boxes)
    if emb.get("queries_new_whale", 1) == 0:
        typer.secho(
            "      warning: no validation photo was a new whale (no photos labelled new_whale, and no whale could be "
            "kept out of the gallery), so the new_whale thresholds could not be chosen against new whales: a whale "
            "the catalogue lacks will be named as a known one. Label a few photos of unnamed whales new_whale, or "
            "set a threshold with `whaleid calibrate --rule new_whale_share`.",
            fg=typer.colors.YELLOW,
        )
    kept_out = stats["gallery_identities"] - before
    joined = f" (and the {kept_out} whale{'s' if kept_out != 1 else ''} kept out of the gallery to play new whales)"
    typer.echo(
        f"      serving {stats['gallery_identities']} whales: the gallery photos, then the validation photos of named "
        f"whales enrolled after calibration"
        + (joined if kept_out else "")
        + f"; photos labelled new_whale are never enrolled ({time.perf_counter() - t:.0f} s)"
    )
    return bundle


def load_gallery_whales(bundle: Path) -> list[str]:
    """The whale ids the bundle's gallery holds now."""
    from index.gallery import Gallery

    manifest = load_manifest(bundle)
    gallery = Gallery.for_manifest(bundle / manifest.gallery.folder, manifest)
    try:
        return gallery.whale_ids()
    finally:
        gallery.close()


def _own_estimate(labels: Path) -> str:
    """What step 4 will take for a catalogue of one's own, from its photo count: a few seconds of fixed
    cost (loading, the descriptor index, calibration) and 0.045 to 0.1 s a listed photo on 2 cores (one
    box's embedding per enrolled photo, SIFT features, the validation photos' five boxes); measured with
    the shipped starter (``gallery.enrol_boxes`` 1) on fresh clones: 60 photos in 5 s, 3,280 in 152 s on
    a quiet machine and about 270 s on a slower, busier one."""
    try:
        n = max(0, len(Path(labels).read_text().splitlines()) - 1)
    except OSError:
        return "about 0.05 to 0.1 s a photo on 2 cores"
    lo, hi = 5 + n * 0.045, 10 + n * 0.1  # seconds: quiet and busy machine
    span = f"about {lo:.0f}-{hi:.0f} s" if hi < 120 else f"about {lo / 60:.0f}-{hi / 60:.0f} minutes"
    return f"{span} for {n} photos on 2 cores, less with more cores"


def example_photos(bundle: Path, photos: Path, labels: Path | None = None) -> tuple[Path | None, Path | None]:
    """Two photos of ``photos`` that the bundle's gallery does not hold (compared by checksum): one to
    identify (its answer is then a real ranking, never the exact-photo match of an enrolled photo) and
    one to enrol. With ``labels``, the photo to enrol is one labelled ``new_whale`` there (a whale the
    catalogue cannot hold): a photo the labels do not list may well show a known whale, and enrolling it
    would file that whale twice. ``None`` where the folder has no such photo.
    """
    from core.fileio import sha256_bytes
    from index.gallery import Gallery
    from whaleid.predict import list_photos

    manifest = load_manifest(bundle)
    gallery = Gallery.for_manifest(bundle / manifest.gallery.folder, manifest)
    try:
        held = {sha for _, sha in gallery.store.stored_photos()}
    finally:
        gallery.close()
    new_whale = None
    if labels is not None and Path(labels).is_file():
        from index.labels import read_labels
        from index.ranking import NEW_WHALE

        new_whale = {img for img, wid in read_labels(labels) if wid == NEW_WHALE}
    unheld: list[Path] = []
    names = list_photos(photos)
    if new_whale:  # the listed new_whale photos first: what to expect of them is known
        names = [n for n in names if n in new_whale] + [n for n in names if n not in new_whale]
    for name in names:
        if len(unheld) == 2:
            break
        if sha256_bytes((photos / name).read_bytes()) not in held:
            unheld.append(photos / name)
    query = unheld[0] if unheld else None
    enrol = next((p for p in unheld[1:] if new_whale is None or p.name in new_whale), None)
    if enrol is None and query is not None and new_whale and query.name in new_whale:
        enrol = query  # identify it, then enrol it when no candidate is the same whale, then find it
    return query, enrol


def example_context(bundle: Path, labels: Path | None, query: Path | None) -> tuple[str, str]:
    """What to expect from the identify example, and a whale id for the enrol example that the gallery
    does not hold yet (``my-whale-1``, else the next free number), so copying the example never files a
    photo under an existing whale.

    Returns:
        ``(note, enrol_whale_id)``; the note is empty when the query's label is unknown.
    """
    from index.gallery import Gallery
    from index.labels import read_labels

    manifest = load_manifest(bundle)
    gallery = Gallery.for_manifest(bundle / manifest.gallery.folder, manifest)
    try:
        held = set(gallery.whale_ids())
    finally:
        gallery.close()
    n = 1
    while f"my-whale-{n}" in held:
        n += 1
    note = ""
    if query is not None and labels is not None and Path(labels).is_file():
        truth = dict(read_labels(labels)).get(Path(query).name)
        if truth is not None and truth in held:
            note = f"(a new photo of whale {truth}: expect it near the top)"
        elif truth is not None:
            note = (
                "(labelled new_whale in your labels, a whale the catalogue does not hold: new_whale should come "
                "first, scored at the threshold; a whale above it is the model's mistake or a whale to check, not a "
                "certain match)"
            )
        else:
            note = "(a photo your labels do not list: the quickstart cannot say which whale it shows)"
    return note, f"my-whale-{n}"


def curl_examples(
    host: str,
    port: int,
    identify_photo: Path | None,
    enrol_photo: Path | None = None,
    enrol_whale_id: str = "my-whale-1",
    identify_note: str = "",
) -> str:
    """The examples printed once the service is up: an identification of a photo the gallery does not
    hold (with what to expect, ``identify_note``) and an enrolment of another such photo under a whale id
    the gallery does not hold (see :func:`example_photos`, :func:`example_context`), with absolute paths
    so they work from any terminal."""
    url = f"http://{host}:{port}"
    query = str(Path(identify_photo).absolute()) if identify_photo else "fluke.jpg"
    new = str(Path(enrol_photo).absolute()) if enrol_photo else "my-fluke.jpg"
    return "\n".join(
        [
            f"  review page:     {url}/        API docs: {url}/docs",
            f"  identify:        curl -F file=@{query} {url}/identify",
            *([f"                   {identify_note}"] if identify_note else []),
            "                   options go in the URL: .../identify?scoring=fused&k=10&explain=true",
            f"  enrol a whale:   curl -F files=@{new} -F whale_id={enrol_whale_id} {url}/gallery",
            "                   (identify a photo first: if one of its top 5 is the same whale, add the photo to that "
            "whale instead)",
            f"  then find it:    curl -F file=@{new} {url}/identify",
            f"  list the whales: curl {url}/gallery",
        ]
    )


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on, naming ``--port``.

    Raises:
        ConfigError: the port is taken (or the address cannot be bound).
    """
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve on {host}:{port} ({exc.strerror or exc}): another server (an earlier quickstart?) "
                f"uses it; stop it (Ctrl-C in its terminal) or pass another port, e.g. --port {port + 1}"
            ) from None


def quickstart(
    images: Path | None,
    labels: Path | None,
    boxes: Path | None,
    home: Path = DEFAULT_HOME,
    host: str = "127.0.0.1",
    port: int = 8000,
    serve: bool = True,
    overrides: list[str] | None = None,
    train: bool = False,
    starter: Path | None = None,
) -> Path:
    """Build the quickstart bundle when missing (:func:`build`), then serve it (see the module docstring)."""
    if (images is None) != (labels is None):
        raise typer.BadParameter("--images and --labels go together")
    if serve:
        check_port_free(host, port)  # before minutes of work, not after
    home = Path(home)
    bundle = home / "bundle"
    t0 = time.perf_counter()
    if (bundle / MANIFEST_NAME).exists() and (bundle / "gallery").exists():
        typer.echo(f"bundle {bundle} exists: serving it (delete the folder to rebuild)")
    else:
        bundle = build(home, images, labels, boxes, overrides, train=train, starter=starter)
        typer.secho(f"bundle ready in {time.perf_counter() - t0:.0f} s: {bundle}", fg=typer.colors.GREEN)
    examples = (None, None)
    photos = images or home / "synthetic" / "images"
    if photos.is_dir():
        label_file = labels or home / "synthetic" / "train.csv"
        examples = example_photos(bundle, photos, label_file)  # photos the gallery does not hold
    note, enrol_id = example_context(bundle, labels or home / "synthetic" / "train.csv", examples[0])
    _step(5, f"serve on http://{host}:{port} (Ctrl-C stops)")
    typer.echo(curl_examples(host, port, *examples, enrol_whale_id=enrol_id, identify_note=note))
    if serve:
        from service.config import Settings
        from service.main import run

        run(host=host, port=port, settings=Settings(bundle=bundle))
    return bundle
