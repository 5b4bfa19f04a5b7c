"""Glue for the stacks Soniq meets: web frameworks, ORMs and drivers.

Each module imports its framework lazily (or not at all), so ``import soniq``
never needs one: ``soniq.integrations.fastapi`` (lifespan and dependency),
``soniq.integrations.connections`` (what ``connection=`` accepts).
"""
