"""Pictures (issue 16): training curves (``curves``), skeleton clips with masks (``clip``), feature maps
(``embed``). Each module imports matplotlib / imageio lazily and raises a one-line error naming the
``[viz]`` extra when they are missing."""
