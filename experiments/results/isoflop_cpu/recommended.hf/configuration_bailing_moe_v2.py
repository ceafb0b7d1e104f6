"""``BailingMoeV2Config``: the Ling 2.0 configuration class, shipped beside an exported ``config.json``.

transformers registers no ``bailing_moe_v2`` model type (5.25 has ``bailing_hybrid``, the Ling 3.0 MLA/KDA
hybrid, a different architecture); the Ling 2.0 releases load their config through ``auto_map`` and
``trust_remote_code=True``. This file is that class for an export folder, so
``AutoConfig.from_pretrained(DIR, trust_remote_code=True)`` works offline. Field names and defaults follow
the Ling-mini-2.0 release's ``config.json`` (inclusionAI/Ling-mini-2.0).
"""

from transformers import PretrainedConfig


class BailingMoeV2Config(PretrainedConfig):
    model_type = "bailing_moe_v2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=157184,
        hidden_size=2048,
        intermediate_size=5120,
        num_hidden_layers=20,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
        hidden_act="silu",
        use_qkv_bias=False,
        use_bias=False,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        output_dropout=0.0,
        initializer_range=0.006,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        partial_rotary_factor=0.5,
        use_qk_norm=True,
        max_window_layers=20,
        num_experts=256,
        num_shared_experts=1,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        moe_intermediate_size=512,
        first_k_dense_replace=1,
        routed_scaling_factor=2.5,
        score_function="sigmoid",
        norm_topk_prob=True,
        moe_router_enable_expert_bias=True,
        router_dtype="fp32",
        num_nextn_predict_layers=0,
        mtp_loss_scaling_factor=0.0,
        use_cache=True,
        output_router_logits=False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_bias = use_bias
        self.rms_norm_eps = rms_norm_eps
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.output_dropout = output_dropout
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.partial_rotary_factor = partial_rotary_factor
        self.use_qk_norm = use_qk_norm
        self.max_window_layers = max_window_layers
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.routed_scaling_factor = routed_scaling_factor
        self.score_function = score_function
        self.norm_topk_prob = norm_topk_prob
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.router_dtype = router_dtype
        self.num_nextn_predict_layers = num_nextn_predict_layers
        self.mtp_loss_scaling_factor = mtp_loss_scaling_factor
        self.use_cache = use_cache
        self.output_router_logits = output_router_logits
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
