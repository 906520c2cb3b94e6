"""The comparison app on Django, in one file, exposing `application` as Django's asgi.py does."""

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="comparison-test-" * 4,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()

import json  # noqa: E402

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

BIG = "compressible text " * 500


def echo(request, name):
    return JsonResponse({"name": name, "query": {key: request.GET.getlist(key) for key in request.GET}})


def post_json(request):
    return JsonResponse({"received": json.loads(request.body)})


def cookies(request):
    return JsonResponse(dict(request.COOKIES))


def headers(request):
    return JsonResponse({"x-test": request.headers.get("x-test")})


def state(request):
    return JsonResponse({"started": "Django has no lifespan"})


def big(request):
    return HttpResponse(BIG, content_type="text/plain")


urlpatterns = [
    path("echo/<str:name>", echo),
    path("json", post_json),
    path("cookies", cookies),
    path("headers", headers),
    path("state", state),
    path("big", big),
]

application = get_asgi_application()
