"""Generation (paper Fig. 2, §3.1): prompt → retrieve → encode → sample → image.

``pipeline`` runs one stage, ``cascade`` chains base → SR, ``distributed`` splits prompts
across processes, ``shipped`` knows where the shipped weights live, ``pretrained`` is the
front door (``reimagen.load``) and ``contact_sheet`` draws images beside their references.
"""
