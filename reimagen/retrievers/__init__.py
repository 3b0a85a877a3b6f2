"""(filled in by its module's plugin hooks)"""
