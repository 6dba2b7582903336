// Reads an async iterable (a store's questions(), exportLog(), ...) into an array.
export async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of iterable) out.push(x);
  return out;
}
