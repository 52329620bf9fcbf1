SELECT 1;

  drop table users;