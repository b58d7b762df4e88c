"""Forward processes and their losses. Each family is one module plus one registry entry."""

from .autoregressive import Autoregressive
from .base import PROCESSES, DiffusionProcess, build_process, register
from .block import BlockDiffusion
from .d3pm import D3PM as D3PM  # registers "d3pm"
from .edit import Diffuser as Diffuser  # registers "diffuser" (DiffusER, edit-based)
from .edit_flow import EditFlow as EditFlow  # registers "edit_flow" (Edit Flows)
from .gaussian import GaussianDiffusion as GaussianDiffusion  # registers "gaussian" (Diffusion-LM)
from .latent import LatentDiffusion as LatentDiffusion  # registers "latent" (LD4LG / PLANNER)
from .masked import MaskedDiffusion
from .sedd import SEDD as SEDD  # registers "sedd"
from .spindle import SpindleMaskedDiffusion as SpindleMaskedDiffusion  # registers "masked-spindle"

__all__ = ["PROCESSES", "Autoregressive", "BlockDiffusion", "DiffusionProcess", "MaskedDiffusion", "build_process",
           "register"]
