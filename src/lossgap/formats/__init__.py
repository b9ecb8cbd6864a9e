"""TODO formats"""
