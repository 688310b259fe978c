"""ComfyUI workflows in: the model files a workflow references, as (type, filename).

Two formats exist. The UI format (what the editor saves) has `nodes`, each with
`type`, `widgets_values` and, in templates, `properties.models` entries
`{name, url, directory}` that say exactly which file of which folder the node
loads; reusable subgraphs live under `definitions.subgraphs` with nodes of their
own. The API format (what `/prompt` takes) maps node ids to `{class_type, inputs}`.

A reference comes from, in order of trust: a `properties.models` entry; a known
loader's widget (by position in the UI format, by input name in the API format);
a subgraph instance's widget mapped to the loader inside the subgraph; and last,
any widget value that looks like a model file (its type then stays unknown and it
is matched by file name alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from depman.core import model_types
from depman.errors import ValidationFailed

# Extensions of model files ComfyUI loads (folder_paths' supported_pt_extensions + gguf/onnx).
MODEL_EXTENSIONS = (
    ".safetensors",
    ".ckpt",
    ".pt",
    ".pt2",
    ".pth",
    ".bin",
    ".sft",
    ".pkl",
    ".gguf",
    ".onnx",
)

# Loader node -> (widget index in the UI format, input name in the API format, folder key).
LOADER_WIDGETS: dict[str, tuple[tuple[int, str, str], ...]] = {
    "CheckpointLoaderSimple": ((0, "ckpt_name", "checkpoints"),),
    "CheckpointLoader": ((0, "config_name", "configs"), (1, "ckpt_name", "checkpoints")),
    "ImageOnlyCheckpointLoader": ((0, "ckpt_name", "checkpoints"),),
    "unCLIPCheckpointLoader": ((0, "ckpt_name", "checkpoints"),),
    "DiffusersLoader": ((0, "model_path", "diffusers"),),
    "LoraLoader": ((0, "lora_name", "loras"),),
    "LoraLoaderModelOnly": ((0, "lora_name", "loras"),),
    "VAELoader": ((0, "vae_name", "vae"),),
    "CLIPLoader": ((0, "clip_name", "text_encoders"),),
    "DualCLIPLoader": ((0, "clip_name1", "text_encoders"), (1, "clip_name2", "text_encoders")),
    "TripleCLIPLoader": tuple((i, f"clip_name{i + 1}", "text_encoders") for i in range(3)),
    "QuadrupleCLIPLoader": tuple((i, f"clip_name{i + 1}", "text_encoders") for i in range(4)),
    "UNETLoader": ((0, "unet_name", "diffusion_models"),),
    "CLIPVisionLoader": ((0, "clip_name", "clip_vision"),),
    "ControlNetLoader": ((0, "control_net_name", "controlnet"),),
    "DiffControlNetLoader": ((0, "control_net_name", "controlnet"),),
    "StyleModelLoader": ((0, "style_model_name", "style_models"),),
    "GLIGENLoader": ((0, "gligen_name", "gligen"),),
    "UpscaleModelLoader": ((0, "model_name", "upscale_models"),),
    "LatentUpscaleModelLoader": ((0, "model_name", "latent_upscale_models"),),
    "HypernetworkLoader": ((0, "hypernetwork_name", "hypernetworks"),),
    "PhotoMakerLoader": ((0, "photomaker_model_name", "photomaker"),),
    "ModelPatchLoader": ((0, "name", "model_patches"),),
    "AudioEncoderLoader": ((0, "audio_encoder_name", "audio_encoders"),),
    "LTXVAudioVAELoader": ((0, "ckpt_name", "checkpoints"),),
    "LTXAVTextEncoderLoader": (
        (0, "text_encoder", "text_encoders"),
        (1, "ckpt_name", "checkpoints"),
    ),
    "LoadBackgroundRemovalModel": ((0, "bg_removal_name", "background_removal"),),
    "FrameInterpolationModelLoader": ((0, "model_name", "frame_interpolation"),),
    "OpticalFlowLoader": ((0, "model_name", "optical_flow"),),
    "LoadMoGeModel": ((0, "model_name", "geometry_estimation"),),
    "LoadDA3Model": ((0, "model_name", "geometry_estimation"),),
}


@dataclass
class ModelRef:
    """One model file a workflow needs: its folder key (None when unknown) and name."""

    model_type: str | None
    filename: str
    url: str | None = None
    node_types: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str | None, str]:
        """(type, filename), what the catalog is matched on."""
        return (self.model_type, self.filename)


def normalise_filename(name: str) -> str:
    """ComfyUI lists files with the OS separator: a workflow saved on Windows has '\\'."""
    return name.replace("\\", "/").strip()


def looks_like_model(value: Any) -> bool:
    """A widget value naming a model file."""
    return isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS)


def canonical_or_none(directory: Any) -> str | None:
    """The folder key of a `directory` / table entry, or the directory itself when custom."""
    if not isinstance(directory, str) or not directory:
        return None
    try:
        return model_types.canonical_type(directory)
    except ValidationFailed:
        return directory


# Bounds of what one workflow may reference: a real one names tens of model files.
MAX_WORKFLOW_MODELS = 1000
MAX_NODE_TYPES_PER_MODEL = 20
MAX_WORKFLOW_DEPTH = 64  # JSON nesting; ComfyUI saves about ten levels


class _Collector:
    """Gathers references, merging those of the same file, in time linear in the adds."""

    def __init__(self) -> None:
        self.refs: dict[tuple[str | None, str], ModelRef] = {}
        self.names: dict[str, int] = {}  # filename -> how many refs carry it
        self.node_types: dict[tuple[str | None, str], set[str]] = {}

    def add(self, model_type: str | None, name: Any, node_type: str, url: Any = None) -> None:
        if not isinstance(name, str) or not name.strip():
            return
        filename = normalise_filename(name)
        if model_type is None:
            # A typed reference of the same file makes the untyped one redundant.
            if filename in self.names:
                return
        elif self.refs.pop((None, filename), None) is not None:
            self._forget((None, filename))
        key = (model_type, filename)
        ref = self.refs.get(key)
        if ref is None:
            if len(self.refs) >= MAX_WORKFLOW_MODELS:
                raise ValidationFailed(
                    f"the workflow references more than {MAX_WORKFLOW_MODELS} model files"
                )
            ref = self.refs[key] = ModelRef(model_type=model_type, filename=filename)
            self.names[filename] = self.names.get(filename, 0) + 1
            self.node_types[key] = set()
        seen = self.node_types[key]
        if node_type and node_type not in seen and len(seen) < MAX_NODE_TYPES_PER_MODEL:
            seen.add(node_type)
            ref.node_types.append(node_type)
        if ref.url is None and isinstance(url, str) and url.startswith(("http://", "https://")):
            ref.url = url

    def _forget(self, key: tuple[str | None, str]) -> None:
        del self.node_types[key]
        left = self.names[key[1]] - 1
        if left:
            self.names[key[1]] = left
        else:
            del self.names[key[1]]

    def result(self) -> list[ModelRef]:
        return sorted(self.refs.values(), key=lambda r: (r.model_type or "~", r.filename))


def _ui_node(node: dict[str, Any], subgraphs: dict[str, dict[str, str]], out: _Collector) -> None:
    node_type = str(node.get("type") or "")
    properties = node.get("properties")
    declared: set[str] = set()
    if isinstance(properties, dict) and isinstance(properties.get("models"), list):
        for entry in properties["models"]:
            if isinstance(entry, dict):
                name, url = entry.get("name"), entry.get("url")
                out.add(canonical_or_none(entry.get("directory")), name, node_type, url)
                if isinstance(name, str):
                    declared.add(name)
    values = node.get("widgets_values")
    if isinstance(values, dict):  # some custom nodes save widgets by name
        values = list(values.values())
    if not isinstance(values, list):
        values = []
    table = LOADER_WIDGETS.get(node_type)
    if table:
        for index, _name, folder in table:
            value = values[index] if index < len(values) else None
            if isinstance(value, str) and value not in ("", "None") and value not in declared:
                out.add(folder, value, node_type)
        return
    folders = subgraphs.get(node_type)
    if folders is not None:
        # The definition's own nodes are walked once, from the definitions list.
        _subgraph_widgets(node, folders, values, declared, out)
        return
    for value in values:
        if looks_like_model(value) and value not in declared:
            out.add(None, value, node_type)


def _subgraph_widgets(
    node: dict[str, Any],
    folders: dict[str, str],
    values: list[Any],
    declared: set[str],
    out: _Collector,
) -> None:
    """A subgraph instance's own widget values, typed by the loader input they feed."""
    names = [
        inp["widget"].get("name")
        for inp in node.get("inputs") or []
        if isinstance(inp, dict) and isinstance(inp.get("widget"), dict)
    ]
    for position, value in enumerate(values):
        if not looks_like_model(value) or value in declared:
            continue
        name = names[position] if position < len(names) else None
        folder = folders.get(name) if isinstance(name, str) else None
        out.add(folder, value, str(node.get("type") or ""))


def _inner_folders(subgraph: dict[str, Any]) -> dict[str, str]:
    """Input name -> folder key of the loaders inside a subgraph (the first loader wins)."""
    folders: dict[str, str] = {}
    for node in subgraph.get("nodes") or []:
        if isinstance(node, dict):
            for _index, name, folder in LOADER_WIDGETS.get(str(node.get("type")), ()):
                folders.setdefault(name, folder)
    return folders


def _api_nodes(nodes: Iterable[Any], out: _Collector) -> None:
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        node_type = str(node.get("class_type") or "")
        inputs = node["inputs"]
        table = LOADER_WIDGETS.get(node_type)
        if table:
            for _index, name, folder in table:
                value = inputs.get(name)
                if isinstance(value, str) and value not in ("", "None"):
                    out.add(folder, value, node_type)
            continue
        for value in inputs.values():
            if looks_like_model(value):
                out.add(None, value, node_type)


def _walk_ui(workflow: dict[str, Any], out: _Collector) -> None:
    definitions = workflow.get("definitions")
    subgraph_list = definitions.get("subgraphs") if isinstance(definitions, dict) else None
    subgraphs = {
        str(s.get("id")): s for s in subgraph_list or [] if isinstance(s, dict) and s.get("id")
    }
    folders = {sid: _inner_folders(s) for sid, s in subgraphs.items()}
    graphs: list[Any] = [workflow.get("nodes")]
    graphs += [s.get("nodes") for s in subgraphs.values()]
    for nodes in graphs:
        for node in nodes if isinstance(nodes, list) else []:
            if isinstance(node, dict):
                _ui_node(node, folders, out)


MAX_WRAPPING = 4  # {"prompt": {"workflow": ...}}: a few levels, never unbounded recursion


def _graphs(document: Any, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """("ui" | "api", graph) for a workflow file, also when wrapped as `prompt`/`workflow`."""
    if not isinstance(document, dict) or depth > MAX_WRAPPING:
        raise ValidationFailed("a workflow must be a JSON object (UI or API format)")
    if isinstance(document.get("nodes"), list):
        yield "ui", document
        return
    wrapped = False
    for key in ("workflow", "prompt"):
        if isinstance(document.get(key), dict):
            wrapped = True
            yield from _graphs(document[key], depth + 1)
    if wrapped:
        return
    if document and all(isinstance(v, dict) and "class_type" in v for v in document.values()):
        yield "api", document
        return
    raise ValidationFailed(
        "not a ComfyUI workflow: expected `nodes` (UI format) or node ids mapping to "
        "`class_type` and `inputs` (API format)"
    )


def nesting_depth(document: Any, limit: int) -> int:
    """How deep `document` nests (a scalar is 0), counted up to `limit + 1`, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        depth += 1
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


def workflow_models(document: Any) -> list[ModelRef]:
    """Every model file the workflow references, by (type, filename); ValidationFailed if
    it is not a workflow or passes the bounds above.

    Linear in the size of the document and free of the store: callers parse before they
    open a session, so a big workflow never holds the writer.
    """
    if nesting_depth(document, MAX_WORKFLOW_DEPTH) > MAX_WORKFLOW_DEPTH:
        raise ValidationFailed(f"the workflow nests deeper than {MAX_WORKFLOW_DEPTH} levels")
    out = _Collector()
    for fmt, graph in _graphs(document):
        if fmt == "ui":
            _walk_ui(graph, out)
        else:
            _api_nodes(graph.values(), out)
    return out.result()
