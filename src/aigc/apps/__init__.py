"""Applications built on the chain: a customer-service assistant (``assistant``), a sentiment
monitor with alerts (``sentiment``) and personal recommendations (``recommend``).

They sit above ``registry`` and ``loop`` and below ``studio`` and ``cli`` (see DESIGN.md): the
studio and the CLI import from here, never the other way round.
"""
