"""transformers configs with the shapes of the released checkpoints (Salesforce/blip2-opt-2.7b,
Salesforce/blip2-itm-vit-g), for random-weight models at full size: the GPU parity tests and the
conversion memory benchmark build them where no hub is reachable."""
from __future__ import annotations

EVA_VIT_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                 image_size=224, patch_size=14, qkv_bias=True)
QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               encoder_hidden_size=1408, cross_attention_frequency=2, vocab_size=30523)
OPT_2_7B = dict(model_type="opt", hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
                vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2560, bos_token_id=2,
                eos_token_id=2, pad_token_id=1)


def blip2_opt_2_7b():
    """Blip2Config of blip2-opt-2.7b (3.87B parameters, 3.74B without the tied lm_head)."""
    from transformers import Blip2Config

    return Blip2Config(vision_config=EVA_VIT_G, qformer_config=QFORMER, text_config=OPT_2_7B, num_query_tokens=32,
                       image_token_index=50265)


def blip2_itm_vit_g():
    """Blip2Config of blip2-itm-vit-g (Blip2ForImageTextRetrieval)."""
    from transformers import Blip2Config

    return Blip2Config(vision_config=EVA_VIT_G, qformer_config=dict(QFORMER, use_qformer_text_input=True),
                       num_query_tokens=32, image_text_hidden_size=256, image_token_index=None,
                       architectures=["Blip2ForImageTextRetrieval"])
