"""The nine Inception modules of the paper's Table 1 (Szegedy et al. 2015; DESIGN.md), the one
copy that tests and benchmarks read.

``TABLE1[name] = (in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, spatial)``,
``spatial`` being the module's H = W at a 224x224 input.  The same channel counts build
GoogLeNet in googlenet_fast.model (torchvision uses them too).
"""

TABLE1 = {
    "3a": (192, 64, 96, 128, 16, 32, 32, 28),
    "3b": (256, 128, 128, 192, 32, 96, 64, 28),
    "4a": (480, 192, 96, 208, 16, 48, 64, 14),
    "4b": (512, 160, 112, 224, 24, 64, 64, 14),
    "4c": (512, 128, 128, 256, 24, 64, 64, 14),
    "4d": (512, 112, 144, 288, 32, 64, 64, 14),
    "4e": (528, 256, 160, 320, 32, 128, 128, 14),
    "5a": (832, 256, 160, 320, 32, 128, 128, 7),
    "5b": (832, 384, 192, 384, 48, 128, 128, 7),
}
