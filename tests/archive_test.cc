// placeholder: written by the module owner
