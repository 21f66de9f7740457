"""{{ cookiecutter.service_name }}: {{ cookiecutter.description }}"""
