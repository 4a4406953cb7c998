"""/api/v1/products: products by sku, with their stock and what orders have reserved of it."""
from flask import jsonify

from common.contract.errors import AlreadyExists, Forbidden, NotFound, StockBelowReserved
from common.contract.schemas.base import ListQuery
from common.contract.schemas.products import ProductInput, ProductPatch
from gateway.calls import read, write
from gateway.http import created, page_args
from gateway.routes.declare import API, routes


@routes.post(f"{API}/products", tag="products", status=201, response="Product", body=ProductInput,
             errors=(Forbidden, AlreadyExists), location=True)
def create_product(body):
    product = write({"sku": body["sku"]}, "inventory_service", "create_product", body)
    return created(product, f"{API}/products/{product['sku']}")


@routes.get(f"{API}/products/<sku>", tag="products", response="Product", errors=(NotFound,))
def get_product(sku):
    return jsonify(read("inventory_service", "get_product", sku))


@routes.get(f"{API}/products", tag="products", response="ProductPage", query=ListQuery)
def list_products(query):
    limit, cursor = page_args(query)
    return jsonify(read("inventory_service", "list_products", limit, cursor))


@routes.patch(f"{API}/products/<sku>", tag="products", response="Product", body=ProductPatch,
              errors=(Forbidden, NotFound, StockBelowReserved))
def update_product(sku, body):
    return jsonify(write({"sku": sku}, "inventory_service", "update_product", sku, body))
