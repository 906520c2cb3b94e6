"""What a node offers a program: the guest API (cache, signing, aleph API proxy), the HTTP
front, a private Redis and the signing key, composed by `HostServices`."""
