"""The NSD ``datasets`` builder: one config per subject, rows of betas + COCO captions + fine captions + objects.

    builder = NSD(config_name="subj01", data_dir="/data/nsd")      # real NSD or SimNSD, same layout
    builder.download_and_prepare(); dd = builder.as_dataset()        # DatasetDict(train, test), memory-mapped
    dd = load_nsd("/data/nsd", subjects=["subj01", "subj02"])        # all subjects' rows, concatenated

Conventions (README "NSD conventions"): test = the shared images (``sharedix``), repetitions averaged; validation =
the training images held out by a fixed rule on the image id (``validation_fraction``, default 5%; see
``data/contract.py``), rows formed as train's; train = every other image the subject saw, single trials
(``average_train=True`` averages them); ``sessions=N`` uses
the first N sessions; betas are nsdgeneral voxels (label > 0) in the C order of the (X, Y, Z) volume, in % signal
change (the stored dtype decides, as in NSD's own files: int16 betas hold % signal change x 300 and are divided
by 300; float betas hold % signal change and are taken as they are; a non-finite value stops the build) and
z-scored per voxel with training statistics (``zscore="train"``; "session" or "none" as options), which are saved
beside the Arrow files (``voxel_stats``) with the build's data contract (``data_contract``). File reading lives in the reader
modules; everything is read and checked in ``_split_generators`` before any row is written, and a failed build
leaves nothing in the cache (datasets writes to ``<dir>.incomplete`` and renames on success).
"""

from __future__ import annotations

import hashlib
import os

import datasets
import numpy as np
from datasets.features.features import encode_nested_example

from .betas import available_sessions, read_nsdgeneral, resolve_sessions
from .contract import CONTRACT_NAME, DEFAULT_VALIDATION_FRACTION, DataContract, array_fingerprint, is_validation_image
from .contract import merge_contracts
from .brain_diffuser import BrainDiffuserSource
from .coco import default_fine_captions, read_coco_annotations, read_fine_captions
from .design import read_expdesign, read_stim_info, trial_table
from .layout import DEFAULT_BETAS_TYPE, SUBJECTS, NSDMissingFileError, NSDPaths, subject_id
from .normalize import STATS_FILENAME, ZSCORE_MODES, VoxelStats, mean_std
from .raw_source import RawBetasSource
from .stimuli import NSDStimuli

_BLOCK_ROWS = 256


class NSDConfig(datasets.BuilderConfig):
    """Options of an NSD build (all become part of the cache key).

    Args:
        subject: ``"subj01"`` ... ``"subj08"`` (the config name).
        layout: ``"raw"`` (NSD's own files), ``"brain-diffuser"`` (``processed_data/``) or ``"auto"`` (raw when
            the subject's betas folder exists, else Brain-Diffuser's files).
        sessions: use the first N sessions (None: all on disk for raw; inferred from the row counts for
            Brain-Diffuser). 37 gives Brain-Diffuser's/MindEye1's 982 test images, 40 MindEye2's 1000.
        betas_format: ``"hdf5"``, ``"nii.gz"`` or ``"auto"`` (hdf5 when present).
        average_train: average each train image's repetitions (default False for raw; Brain-Diffuser's files
            are averaged already, so only True is possible there). Test rows are always averaged.
        zscore: ``"train"`` (per voxel, statistics of the training rows, ddof=1), ``"session"`` (each trial by its
            session's training-trial statistics, before averaging) or ``"none"`` (% signal change).
        beta_dtype: ``"float16"`` (default) or ``"float32"``.
        fine_captions: path of a fine-captions JSONL (default ``<root>/fine_captions.jsonl`` if it exists;
            ``""`` for none).
        skip_flagged_fine_captions: leave out records with ``"flagged": true``.
        on_missing_captions: ``"error"`` (default) or ``"warn"`` (keep with empty captions) for a COCO id that
            has no caption in the annotations.
        annotations_dir: COCO annotations folder (default NSD's ``nsddata_stimuli/stimuli/nsd/annotations``).
        processed_dir: Brain-Diffuser's ``processed_data`` folder (default ``<root>/processed_data``).
        betas_type: NSD's betas version folder (default ``betas_fithrf_GLMdenoise_RR``).
        validation_fraction: the share of training images held out as the ``validation`` split, chosen by
            ``fgb2i_hf.data.contract.is_validation_image`` (a hash of the image id; 0: no validation split).
    """

    def __init__(self, subject="subj01", layout="auto", sessions=None, betas_format="auto", average_train=None,
                 zscore="train", beta_dtype="float16", fine_captions=None, skip_flagged_fine_captions=False,
                 on_missing_captions="error", annotations_dir=None, processed_dir=None,
                 betas_type=DEFAULT_BETAS_TYPE, validation_fraction=DEFAULT_VALIDATION_FRACTION, source_fingerprint="",
                 **kwargs):
        super().__init__(**kwargs)
        self.subject, self.layout, self.sessions, self.betas_format = subject, layout, sessions, betas_format
        self.average_train, self.zscore, self.beta_dtype = average_train, zscore, beta_dtype
        self.fine_captions, self.skip_flagged_fine_captions = fine_captions, skip_flagged_fine_captions
        self.on_missing_captions, self.annotations_dir = on_missing_captions, annotations_dir
        self.processed_dir, self.betas_type, self.source_fingerprint = processed_dir, betas_type, source_fingerprint
        self.validation_fraction = validation_fraction


_OPTIONS = ("layout", "sessions", "betas_format", "average_train", "zscore", "beta_dtype", "fine_captions",
            "skip_flagged_fine_captions", "on_missing_captions", "annotations_dir", "processed_dir", "betas_type",
            "validation_fraction")


def _check_options(cfg: NSDConfig) -> None:
    choices = {"layout": ("auto", "raw", "brain-diffuser"), "betas_format": ("auto", "hdf5", "nii.gz"),
               "zscore": ZSCORE_MODES, "beta_dtype": ("float16", "float32"), "on_missing_captions": ("error", "warn")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    if cfg.sessions is not None and (isinstance(cfg.sessions, bool) or not isinstance(cfg.sessions, int) or cfg.sessions < 1):
        raise ValueError(f"sessions must be a positive int or None, got {cfg.sessions!r}")
    if cfg.average_train not in (None, True, False):
        raise ValueError(f"average_train must be True, False or None, got {cfg.average_train!r}")
    fraction = cfg.validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be a number in [0, 1), got {fraction!r}")


def _fingerprint(root: str, subject: str, options: dict) -> str:
    """Sizes and mtimes of the files a build reads, so a changed source never reuses a stale cache."""
    paths = NSDPaths(root, options.get("betas_type") or DEFAULT_BETAS_TYPE, options.get("annotations_dir"))
    files = [paths.expdesign, paths.stim_info, paths.nsdgeneral(subject), paths.fine_captions]
    files += [p(s) for s in ("train2017", "val2017") for p in (paths.captions, paths.instances)]
    if options.get("fine_captions"):
        files.append(os.path.abspath(options["fine_captions"]))
    for folder in (paths.betas_dir(subject), os.path.join(options.get("processed_dir") or os.path.join(paths.root, "processed_data"), subject)):
        if os.path.isdir(folder):
            files += [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            h.update(f"{f}:missing;".encode())
    return h.hexdigest()[:16]


class _ArrayPassthroughFeatures(datasets.Features):
    """Features that hand 1-D numpy arrays to Arrow untouched.

    datasets' generic ``encode_example`` turns a (V,) array into a Python list of numpy scalars; measured on
    15,724 float16 voxels that made writing ~15x slower (~400 vs ~5,800 rows/s) and buffered rows as objects.
    """

    def encode_example(self, example):
        arrays = {k: v for k, v in example.items() if isinstance(v, np.ndarray)}
        rest = {k: v for k, v in example.items() if k not in arrays}
        out = encode_nested_example({k: self[k] for k in rest}, rest)
        out.update(arrays)
        return out


class NSD(datasets.GeneratorBasedBuilder):
    """The Natural Scenes Dataset (or SimNSD) as a ``datasets`` builder; configs ``subj01`` ... ``subj08``."""

    BUILDER_CONFIG_CLASS = NSDConfig
    BUILDER_CONFIGS = [NSDConfig(name=s, subject=s, description=f"NSD {s}: nsdgeneral betas with COCO and fine captions")
                       for s in SUBJECTS]
    DEFAULT_CONFIG_NAME = "subj01"
    DEFAULT_WRITER_BATCH_SIZE = _BLOCK_ROWS
    VERSION = datasets.Version("1.1.0")  # 1.1: the validation split and the data contract

    def __init__(self, config_name: str = "subj01", data_dir: str | None = None, **kwargs):
        if not data_dir:
            raise ValueError("data_dir must be the NSD root (the folder holding nsddata/, nsddata_stimuli/, nsddata_betas/)")
        if not os.path.isdir(data_dir):
            raise NSDMissingFileError(f"NSD root {data_dir} does not exist")
        config_name = subject_id(config_name)
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
        kwargs["source_fingerprint"] = _fingerprint(data_dir, config_name, {k: kwargs.get(k) for k in _OPTIONS})
        kwargs.setdefault("dataset_name", "nsd")
        super().__init__(config_name=config_name, data_dir=data_dir, **kwargs)
        _check_options(self.config)
        self._source = None

    def _info(self):
        return datasets.DatasetInfo(
            description="Natural Scenes Dataset single-trial betas (nsdgeneral) with COCO captions, fine-grained "
                        "captions and COCO object categories; images by nsd_id via fgb2i_hf.data.NSDStimuli.",
            homepage="https://naturalscenesdataset.org",
            features=datasets.Features({
                "subject": datasets.Value("string"), "nsd_id": datasets.Value("int32"), "coco_id": datasets.Value("int64"),
                "betas": datasets.List(datasets.Value(self.config.beta_dtype)),
                "captions": datasets.List(datasets.Value("string")),
                "fine_captions": datasets.List(datasets.Value("string")),
                "objects": datasets.List(datasets.Value("string")),
                "trials": datasets.List(datasets.Value("int32"))}))

    # -- reading and checking everything, before any row is written --

    def _layout(self, paths: NSDPaths) -> str:
        cfg = self.config
        processed = cfg.processed_dir or os.path.join(paths.root, "processed_data")
        if cfg.layout != "auto":
            return cfg.layout
        if os.path.isdir(paths.betas_dir(cfg.subject)):
            return "raw"
        if os.path.isdir(os.path.join(processed, cfg.subject)):
            return "brain-diffuser"
        raise NSDMissingFileError(
            f"no betas for {cfg.subject}: neither {paths.betas_dir(cfg.subject)} (the 'nsddata_betas' download) nor "
            f"{os.path.join(processed, cfg.subject)} (Brain-Diffuser's processed_data) exists")

    def _metadata(self, paths: NSDPaths, nsd_ids) -> dict:
        cfg = self.config
        info = read_stim_info(paths, nsd_ids)
        wanted: dict[str, set[int]] = {}
        for coco_id, split in info.values():
            wanted.setdefault(split, set()).add(coco_id)
        captions, objects = read_coco_annotations(paths, wanted, cfg.on_missing_captions)
        if cfg.fine_captions == "":
            fine_path = None
        elif cfg.fine_captions:
            fine_path = os.path.abspath(os.path.expanduser(cfg.fine_captions))
            if not os.path.isfile(fine_path):
                raise FileNotFoundError(f"fine captions file {fine_path} not found (fine_captions=...)")
        else:
            fine_path = default_fine_captions(paths)
        fine = read_fine_captions(fine_path, info, cfg.skip_flagged_fine_captions) if fine_path else {}
        return {i: (c, captions[c], objects[c], fine.get(i, [])) for i, (c, _) in info.items()}

    def _split_generators(self, dl_manager):
        cfg = self.config
        paths = NSDPaths(cfg.data_dir, cfg.betas_type, cfg.annotations_dir)
        layout = self._layout(paths)
        design = read_expdesign(paths)

        def held_out(nsd_id):
            return is_validation_image(nsd_id, cfg.validation_fraction)

        self._bd_captions = None
        if layout == "raw":
            average_train = bool(cfg.average_train)  # None -> single trials
            files = available_sessions(paths, cfg.subject, cfg.betas_format)
            sessions = resolve_sessions(files, cfg.sessions, paths.betas_dir(cfg.subject))
            table = trial_table(design, cfg.subject, sessions)
            self._meta = self._metadata(paths, table.nsd_ids)
            labels = read_nsdgeneral(paths, cfg.subject)
            scratch = os.path.join(self._output_dir, f"{cfg.subject}.betas.scratch")
            self._source = RawBetasSource(table, files, labels, scratch, average_train, cfg.zscore, held_out)
            mask = array_fingerprint(labels > 0)
        else:
            if cfg.average_train is False:
                raise ValueError("Brain-Diffuser's processed files hold per-image averages; average_train=False needs "
                                 "the raw layout (nsddata_betas)")
            if cfg.zscore == "session":
                raise ValueError("zscore='session' needs single trials (raw layout); Brain-Diffuser's files are averages")
            processed = cfg.processed_dir or os.path.join(paths.root, "processed_data")
            n_vox = None
            if os.path.isfile(paths.nsdgeneral(cfg.subject)):
                n_vox = int((read_nsdgeneral(paths, cfg.subject) > 0).sum())
            self._source = BrainDiffuserSource(processed, cfg.subject, design, cfg.sessions, n_vox)
            if os.path.isfile(paths.stimuli):
                with NSDStimuli(paths.stimuli) as stim:
                    self._source.check_images(stim)
            average_train, sessions = True, self._source.sessions
            mask = (array_fingerprint(read_nsdgeneral(paths, cfg.subject) > 0) if n_vox is not None
                    else f"brain-diffuser:{self._source.n_vox}")
            self._meta = self._metadata(paths, self._source.table.nsd_ids)
            self._bd_captions = self._source.captions
        self._source.hold_out(held_out)
        self._stats = self._statistics(self._source)
        self._stats.save(os.path.join(self._output_dir, STATS_FILENAME))
        contract = DataContract(subjects=(cfg.subject,), sessions=int(sessions), average_train=average_train,
                                zscore=cfg.zscore, validation_fraction=float(cfg.validation_fraction), layout=layout,
                                betas_type=cfg.betas_type, beta_dtype=cfg.beta_dtype, voxel_mask={cfg.subject: mask},
                                stats={cfg.subject: array_fingerprint(self._stats.mean, self._stats.std)})
        contract.save(self._output_dir)
        splits = [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"split": "train"})]
        if cfg.validation_fraction > 0:
            splits.append(datasets.SplitGenerator(name=datasets.Split.VALIDATION, gen_kwargs={"split": "validation"}))
        return splits + [datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"split": "test"})]

    def _statistics(self, source) -> VoxelStats:
        """Per-voxel mean and std (ddof=1) of the training rows in % signal change."""
        total = np.zeros(source.n_vox)
        total_sq = np.zeros(source.n_vox)
        n = len(source.rows["train"])
        for start in range(0, n, 4 * _BLOCK_ROWS):
            # statistics of the rows in % signal change, whatever the z-scoring mode
            block = source.row_block("train", start, min(n, start + 4 * _BLOCK_ROWS), session_zscore=False)
            total += block.sum(0, dtype=np.float64)
            total_sq += np.square(block).sum(0, dtype=np.float64)
        mean, std = mean_std(total, total_sq, n)
        session = self.config.zscore == "session"
        return VoxelStats(self.config.subject, self.config.zscore, mean, std, n,
                          source.session_mean if session else None, source.session_std if session else None)

    def _generate_examples(self, split):
        cfg, source, stats = self.config, self._source, self._stats
        rows = source.rows[split]
        for start in range(0, len(rows), _BLOCK_ROWS):
            stop = min(len(rows), start + _BLOCK_ROWS)
            block = source.row_block(split, start, stop)
            if cfg.zscore == "train":
                block = (block - stats.mean) / stats.std
            block = block.astype(cfg.beta_dtype)
            for k in range(stop - start):
                nsd_id, trials = rows[start + k]
                coco_id, captions, objects, fine = self._meta[nsd_id]
                if self._bd_captions is not None:
                    captions = self._bd_captions[split][start + k]
                yield start + k, {"subject": cfg.subject, "nsd_id": nsd_id, "coco_id": coco_id, "betas": block[k],
                                  "captions": list(captions), "fine_captions": list(fine), "objects": list(objects),
                                  "trials": trials.astype(np.int32)}

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        self.info.features = _ArrayPassthroughFeatures(self.info.features)
        try:
            super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
        finally:
            if self._source is not None:
                self._source.close()  # also deletes the scratch file before the folder is renamed into place
                self._source = None

    def data_contract(self) -> DataContract:
        """The data contract of this build (after ``download_and_prepare``)."""
        return DataContract.load(self._output_dir, f"the NSD build of {self.config.subject}")

    def voxel_stats(self) -> VoxelStats:
        """The z-scoring statistics saved with this build (after ``download_and_prepare``)."""
        return VoxelStats.load(os.path.join(self._output_dir, STATS_FILENAME))


def _subjects_on_disk(root: str, processed_dir: str | None, betas_type: str) -> list[str]:
    paths = NSDPaths(root, betas_type)
    processed = processed_dir or os.path.join(paths.root, "processed_data")
    found = [s for s in SUBJECTS if os.path.isdir(paths.betas_dir(s)) or os.path.isdir(os.path.join(processed, s))]
    if not found:
        raise NSDMissingFileError(f"no subject with betas under {root} (nsddata_betas/ppdata/subjXX/func1pt8mm/"
                                  f"{betas_type}) or {processed}/subjXX")
    return found


def load_nsd(root: str, subjects=None, cache_dir: str | None = None, download_mode=None, **options) -> datasets.DatasetDict:
    """Build (or reuse from the cache) each subject's NSD dataset and concatenate them.

    Args:
        root: NSD root (real NSD or SimNSD).
        subjects: e.g. ``["subj01", "subj02"]`` (ints accepted); None = every subject with betas on disk.
        cache_dir: ``datasets`` cache folder (default HF's).
        download_mode: e.g. ``"force_redownload"`` to rebuild.
        **options: :class:`NSDConfig` options (``sessions``, ``zscore``, ``average_train``, ...), for every subject.
    Returns:
        ``DatasetDict(train=..., validation=..., test=...)`` (no validation with ``validation_fraction=0``); each
        subject's rows in turn, memory-mapped Arrow. Its ``data_contract`` attribute is the build's
        :class:`~fgb2i_hf.data.contract.DataContract` (also ``data_contract(dataset)`` of any of its splits).
    """
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"unknown NSD option(s) {sorted(unknown)}; options are {sorted(_OPTIONS)}")
    if subjects is None:
        subjects = _subjects_on_disk(root, options.get("processed_dir"), options.get("betas_type") or DEFAULT_BETAS_TYPE)
    elif isinstance(subjects, (str, int)):
        subjects = [subjects]
    subjects = [subject_id(s) for s in subjects]
    if len(set(subjects)) != len(subjects):
        raise ValueError(f"subjects listed twice: {subjects}")
    parts: dict[str, list[datasets.Dataset]] = {}
    contracts = []
    for subject in subjects:
        builder = NSD(config_name=subject, data_dir=root, cache_dir=cache_dir, **options)
        builder.download_and_prepare(download_mode=download_mode)
        built = builder.as_dataset()
        for split in built:
            parts.setdefault(str(split), []).append(built[split])
        contracts.append(builder.data_contract())
    dd = datasets.DatasetDict({k: v[0] if len(v) == 1 else datasets.concatenate_datasets(v) for k, v in parts.items()})
    dd.data_contract = merge_contracts(contracts)
    return dd


def data_contract(dataset) -> DataContract:
    """The data contract of an NSD ``Dataset`` or ``DatasetDict`` from ``load_nsd`` (read from beside its Arrow
    files, so it survives ``select``/``filter`` of the split)."""
    if hasattr(dataset, "data_contract"):
        return dataset.data_contract
    if isinstance(dataset, datasets.DatasetDict):
        dataset = next(iter(dataset.values()))
    folders = list(dict.fromkeys(os.path.dirname(f["filename"]) for f in dataset.cache_files))
    pieces = [DataContract.load(folder) for folder in folders if os.path.isfile(os.path.join(folder, CONTRACT_NAME))]
    if not pieces:
        raise ValueError("this dataset carries no data contract: it was not built by fgb2i_hf.data.load_nsd")
    return merge_contracts(pieces)
