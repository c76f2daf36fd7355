"""Small pieces every stage shares, one module each:

- ``utils.cli``: one-line user errors (UserError), run_cli, --help formatting, --device
- ``utils.files``: atomic writes, JSON, safe torch.load / torch.save, file kinds
- ``utils.images``: uint8 conversion, image grids, PNG and GIF writing

Their names are also importable from ``utils`` itself (``utils.save_png``).
"""
from utils.cli import HelpFormatter, UserError, resolve_device, run_cli
from utils.files import append_jsonl, atomic_path, file_kind, save_json, torch_load, torch_save
from utils.images import image_grid, quantize, save_gif, save_grid, save_png, titled_blocks, to_uint8

__all__ = ["HelpFormatter", "UserError", "resolve_device", "run_cli", "append_jsonl", "atomic_path", "file_kind",
           "save_json", "torch_load", "torch_save", "image_grid", "quantize", "save_gif", "save_grid", "save_png", "titled_blocks",
           "to_uint8"]
