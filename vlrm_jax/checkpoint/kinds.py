"""The model kinds a folder's config.json names: converters write them, loaders check them."""
BLIP2_OPT = "blip2_opt"  # BLIP2 captioner with an OPT language model
BLIP2_ITM = "blip2_itm"  # BLIP2 image-text matching (the reward's sim term)
OPT = "opt"  # OPT language model alone (the reference LM)
OPEN_CLIP = "open_clip"  # OpenCLIP image and text towers
