"""vmshift.devcluster"""
