"""Shared pieces of the caption tests: images by id, a tiny saved LLaVA."""

import numpy as np


class ArrayStimuli:
    """Images by nsd_id from an in-memory uint8 array (N, H, W, 3); ``fail`` ids raise like an unreadable chunk."""

    def __init__(self, images, fail=()):
        self.images = np.asarray(images, np.uint8)
        self.fail = set(fail)
        self.path = "<array>"

    def __len__(self):
        return len(self.images)

    def get(self, ids):
        ids = list(ids)
        bad = self.fail.intersection(ids)
        if bad:
            raise OSError(f"Can't synchronously read data (image {sorted(bad)[0]})")
        return self.images[ids]


def random_images(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def corrupt_h5_image(path, nsd_id):
    """Overwrite the stored (compressed) chunk of one image in an imgBrick file, so reading it fails."""
    import h5py

    with h5py.File(path, "r") as f:
        d = f["imgBrick"]
        info = d.id.get_chunk_info_by_coord((nsd_id,) + (0,) * (d.ndim - 1))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\x00" * info.size)


def write_h5_brick(path, images):
    """An imgBrick file with one gzip chunk per image (as NSD's MATLAB writer chunks it per image)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("imgBrick", data=images, chunks=(1,) + images.shape[1:], compression="gzip")
    return path
