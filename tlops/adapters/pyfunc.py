"""The classifier as an MLflow 3 pyfunc LoggedModel that speaks images.

:class:`ImageClassifier` is the model ``mlflow models serve`` runs: it takes encoded image
bytes (a ``binary`` ``image`` column; base64 text in JSON) or file paths (a ``path`` column)
and answers, per image, ``label``, ``score`` and the probability of every class by name
(:mod:`tlops.model.serving`). A request it cannot answer is an ``MlflowException`` with
``INVALID_PARAMETER_VALUE``: the scoring server answers 400 with that message, and keeps
serving.

:func:`log_image_model` logs it as a LoggedModel of a run (the experiment's Models tab,
``search_logged_models``, a ``model_id`` that registered versions carry), with the Keras
model and ``tlops.json`` as its artifacts, a signature and a real small image as input example,
and the ``tlops`` package itself as its code (``code_paths``): the model needs only its pip
requirements (Keras, its backend, Pillow, MLflow) to be served.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from tlops.adapters.tracking import client, model_requirements, service, tracking_uri

KERAS_ARTIFACT = "keras_model"
META_ARTIFACT = "tlops"
#: Batch size of the served model's forward passes.
SERVE_BATCH = 32
#: Distributions the served model imports beyond Keras and its backend, pinned as installed:
#: Pillow decodes the requests exactly as it decoded the training images.
SERVE_PACKAGES = ("pillow",)


def code_root() -> Path:
    """The ``tlops`` package folder, logged with every image model as its code: the served
    model decodes with the code that trained it, and loads where tlops is not installed."""
    import tlops

    return Path(tlops.__file__).resolve().parent


class ImageClassifier(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Encoded images (or paths) in, label / score / probabilities out."""

    def load_context(self, context: Any) -> None:
        """Load the Keras model (safe mode) and its card."""
        import keras

        from tlops.model.serving import ModelCard

        self.model = keras.models.load_model(context.artifacts[KERAS_ARTIFACT], safe_mode=True)
        meta = json.loads(Path(context.artifacts[META_ARTIFACT]).read_text(encoding="utf-8"))
        self.card = ModelCard.from_meta(meta)

    # no type hints here: MLflow would take them for the input schema (the signature says it)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Answer one request (a DataFrame with an ``image`` or ``path`` column)."""
        return answer(self.model, self.card, model_input)


def answer(model: Any, card: Any, model_input: Any) -> Any:
    """The answer table for a request; a bad request is an ``MlflowException`` (400)."""
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from tlops.model.classifier import predict_batches, probabilities
    from tlops.model.serving import BadRequestError, answer_rows, request_images

    try:
        images = request_images(model_input, card)
    except BadRequestError as exc:
        raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
    probs = probabilities(predict_batches(model, images, SERVE_BATCH), card.binary)
    return pd.DataFrame(answer_rows(probs, card.classes))


def example_png(size: int) -> bytes:
    """A small real PNG (a grey gradient), the logged input example."""
    from PIL import Image

    ramp = np.linspace(0, 255, size * size, dtype=np.float64).reshape(size, size)
    buffer = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint8), "L").convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def signature(example: Any, output: Any) -> Any:
    """Inputs: an optional ``binary`` ``image`` and an optional ``string`` ``path`` column;
    outputs as inferred from the answer to the example."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [ColSpec("binary", "image", required=False), ColSpec("string", "path", required=False)]
    )
    return ModelSignature(inputs=inputs, outputs=infer_signature(example, output).outputs)


@contextmanager
def _fluent_defaults(uri: str, experiment_id: str) -> Iterator[None]:
    """Within the block MLflow's fluent API uses tlops' store and the run's experiment:
    ``Model.log`` takes a run id but resolves the store from MLflow's global default (a URI
    set in-process with ``mlflow.set_tracking_uri``, else the environment) and puts the
    LoggedModel in the default experiment otherwise (the run's is where its Models tab is).
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment_id})
    try:
        # a URI set with ``mlflow.set_tracking_uri`` (by the caller's own code) wins over the
        # environment: MLflow's own context sets it for the block and puts the old one back
        with _use_tracking_uri(uri):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _CheckedPyfunc:
    """``mlflow.pyfunc`` as ``Model.log``'s flavor, without MLflow's own try of the input
    example: it loads the model a second time and only warns when the example fails, where
    :func:`log_image_model` has already answered it with the loaded model, and raises."""

    __name__ = mlflow.pyfunc.__name__

    @staticmethod
    def save_model(**kwargs: Any) -> None:
        """``mlflow.pyfunc.save_model`` (``Model.log`` hands it the flag it reads itself)."""
        kwargs.pop("validate_serving_input", None)
        mlflow.pyfunc.save_model(**kwargs)


@dataclass(frozen=True)
class LoggedImageModel:
    """Where a logged image model is: its ``model_id`` and its ``models:/`` URI."""

    model_id: str
    uri: str


def log_image_model(
    run_id: str, keras_file: Path, meta: dict[str, Any], name: str = "model"
) -> LoggedImageModel:
    """Log ``keras_file`` (with ``meta`` as ``tlops.json``) as the run's pyfunc LoggedModel."""
    import keras
    import pandas as pd
    from mlflow.models import Model

    from tlops.model.serving import ModelCard

    card = ModelCard.from_meta(meta)
    model = keras.models.load_model(keras_file, safe_mode=True)
    side = model.inputs[0].shape[1]
    if side != card.image_size:
        raise ValueError(f"{keras_file}: the model takes {side} px images, its card says "
                         f"{card.image_size}")  # fmt: skip
    example = pd.DataFrame({"image": [example_png(min(card.image_size, 32))]})
    output = answer(model, card, example)
    with service("log the model"), tempfile.TemporaryDirectory() as tmp:
        experiment = client().get_run(run_id).info.experiment_id
        meta_file = Path(tmp) / "tlops.json"
        meta_file.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        with _fluent_defaults(tracking_uri(), experiment):
            info = Model.log(
                artifact_path=None, name=name, flavor=_CheckedPyfunc, run_id=run_id,
                python_model=ImageClassifier(),
                artifacts={KERAS_ARTIFACT: str(keras_file), META_ARTIFACT: str(meta_file)},
                signature=signature(example, output), input_example=example,
                pip_requirements=model_requirements(keras.backend.backend(), SERVE_PACKAGES),
                code_paths=[str(code_root())],
                validate_serving_input=False,
            )  # fmt: skip
    return LoggedImageModel(model_id=str(info.model_id), uri=f"models:/{info.model_id}")
