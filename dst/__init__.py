"""Dual-Stream Training (DST) for Full-Spike Neural Networks, in plain PyTorch.

    from dst.models import create_model
    model = create_model("fsnn_resnet18", T=4, connect="IAND", aap=True)
    logits = model(images)            # StreamLogits(fsnn=z_F, dsnn=z_A) while the AAP is present
"""
__version__ = "0.1.0"
