"""Radiologist review: sign off, amend or reject a result, and publish the verified SR."""
