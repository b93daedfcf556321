def build_specs(ns):
    return []
