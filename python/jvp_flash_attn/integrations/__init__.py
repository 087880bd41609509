"""Adapters that put jvp_flash_attn's attention into other libraries' models.

Each adapter is its own module and imports its library only when imported itself, so the
package never needs them: ``from jvp_flash_attn.integrations import diffusers``.
"""
