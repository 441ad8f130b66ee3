"""Model families; importing this registers every model with timm."""
from .vmamba import VMamba
from .efficient_vmamba import EfficientVMamba
from .vim import Vim
from .localmamba import LocalVMamba
from .groupmamba import GroupMamba
from .mambavision import MambaVision
from .mobilemamba import MobileMamba
from .spatial_mamba import SpatialMamba
