"""Model packages whose weights are stored as float16: half the size on disk, the same float32 network in memory.

A wider network (24 or 32 base filters) would break the ~20 MB a package may weigh with float32 weights in both its
Keras and its ONNX file. Stored as float16 they take half, and nothing else changes:

- the Keras file keeps Keras's own format; only the arrays of ``model.weights.h5`` are float16, and Keras casts them
  into the model's float32 variables when it loads them;
- the ONNX file holds each float32 initializer as float16 followed by a Cast to float32, which ONNX Runtime folds
  into a constant when it opens the session, so inference runs in float32 at the same speed.

Training rounds the chosen checkpoint's weights to float16 *before* it scores the validation and test patients
(:func:`round_weights`), so the card's figures are those of the weights that ship.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_write

WEIGHT_DTYPES = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
KERAS_WEIGHTS = "model.weights.h5"
# How far the float16 ONNX copy's probabilities may differ from the Keras model's (float16 keeps 11 significant
# bits; on the bundled U-Net the largest difference was about 1e-5)
MAX_HALF_ONNX_DIFF = 1e-3


def round_weights(model) -> None:
    """Rounds every float32 weight of a Keras model to the nearest float16 value, in place (kept as float32).

    Raises:
        IvdsegError: a weight beyond float16's range (about 65504), which float16 storage would turn into infinity.
    """
    rounded = []
    for variable, value in zip(model.weights, model.get_weights()):
        if value.dtype == np.float32:
            largest = float(np.abs(value).max()) if value.size else 0.0
            if not largest <= FLOAT16_MAX:
                raise IvdsegError(f"The weight {variable.path} reaches {largest:.3g}, beyond float16's range; "
                                  "store this model's weights as float32 (--weights float32).")
            value = value.astype(np.float16).astype(np.float32)
        rounded.append(value)
    model.set_weights(rounded)


def halve_keras_file(path) -> None:
    """Stores the float32 arrays of a ``.keras`` file's weights as float16; every other member is copied unchanged."""
    import h5py

    path = Path(path)

    def write(temp: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(path) as src:
                src.extract(KERAS_WEIGHTS, tmp)
                half = Path(tmp) / "half.h5"
                with h5py.File(Path(tmp) / KERAS_WEIGHTS, "r") as f, h5py.File(half, "w") as g:
                    _copy_h5(f, g)
                with zipfile.ZipFile(temp, "w") as dst:
                    for info in src.infolist():
                        if info.filename == KERAS_WEIGHTS:
                            dst.write(half, KERAS_WEIGHTS, compress_type=info.compress_type)
                        else:
                            dst.writestr(info, src.read(info))

    atomic_write(path, write, overwrite=True)


def _copy_h5(src, dst) -> None:
    """Copies an h5 group recursively, float32 datasets as float16, attributes as they are."""
    import h5py

    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name, item in src.items():
        if isinstance(item, h5py.Group):
            _copy_h5(item, dst.create_group(name))
            continue
        data = item[()]
        if isinstance(data, np.ndarray) and data.dtype == np.float32:
            data = data.astype(np.float16)
        dst.create_dataset(name, data=data)
        for key, value in item.attrs.items():
            dst[name].attrs[key] = value


def halve_onnx_file(path) -> None:
    """Stores each float32 initializer of an ONNX file as float16 followed by a Cast back to float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    taken = {i.name for i in graph.initializer} | {n for node in graph.node for n in (*node.input, *node.output)}
    initializers, casts = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            initializers.append(init)
            continue
        value = numpy_helper.to_array(init)
        if not np.abs(value).max(initial=0.0) <= FLOAT16_MAX:
            raise IvdsegError(f"{path}: the initializer {init.name} is beyond float16's range; its weights stay "
                              "float32 (--weights float32).")
        half_name = init.name + "__float16"
        while half_name in taken:
            half_name += "_"
        taken.add(half_name)
        initializers.append(numpy_helper.from_array(value.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [init.name], to=TensorProto.FLOAT,
                                      name=half_name + "_to_float32"))
    nodes = [*casts, *graph.node]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    atomic_write(path, lambda temp: onnx.save(model, str(temp)), overwrite=True)


def check_half_onnx(path, model) -> float:
    """The largest difference between the float16 ONNX copy's and the Keras model's outputs on a random batch.

    Raises:
        IvdsegError: a difference above MAX_HALF_ONNX_DIFF (the copy is not written into a package).
    """
    import onnxruntime as ort

    x = np.random.default_rng(0).random((2, *model.input_shape[1:]), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    diff = float(np.abs(got - np.asarray(model(x, training=False))).max())
    if diff > MAX_HALF_ONNX_DIFF:
        raise IvdsegError(f"The float16 ONNX copy differs from the Keras model by {diff:.2e}; store the weights as "
                          "float32 (--weights float32).")
    return diff

